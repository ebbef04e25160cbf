# Escape: see and signal processes of the host (the test runner itself).
# Expect: the host process is invisible or cannot be signalled; it survives.
import os, signal
visible = [p for p in os.listdir("/proc") if p.isdigit()]
print("visible pids:", len(visible))
try:
    os.kill(host_pid, signal.SIGTERM)
    print("signalled host")
except OSError as e:
    print("kill ->", type(e).__name__)
