# Escape: read the host's password hashes, environment and another process's environment (directly, through /proc/1/root and /proc/<host pid>).
# Expect: the reads fail or show the sandbox's own files; no host secret appears in the output.
import os
for path in ["/etc/shadow", "/etc/gshadow", "/proc/1/environ", "/proc/1/root/etc/shadow", f"/proc/{host_pid}/environ", f"/proc/{host_pid}/root/etc/shadow"]:
    try:
        with open(path, "rb") as f:
            print(path, f.read(4096))
    except OSError as e:
        print(path, "->", type(e).__name__)
print("environment:", sorted(os.environ.items()))
