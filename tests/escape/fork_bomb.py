# Escape: exhaust the host's process table, and leave processes behind.
# Expect: forks fail at the sandbox's process limit; nothing survives the sandbox.
import os
n = 0
try:
    for _ in range(100000):
        if os.fork() == 0:
            os.execvp("sleep", ["sleep", marker_seconds])
        n += 1
except OSError as e:
    print("fork stopped after", n, "->", type(e).__name__)
