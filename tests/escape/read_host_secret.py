# Escape: read the host's password hashes and another process's environment.
# Expect: the reads fail or show the sandbox's own files; no host secret appears in the output.
import os
for path in ["/etc/shadow", "/etc/gshadow", "/proc/1/environ", f"/proc/{host_pid}/environ", f"/proc/{host_pid}/root/etc/shadow"]:
    try:
        with open(path, "rb") as f:
            print(path, f.read(4096))
    except OSError as e:
        print(path, "->", type(e).__name__)
