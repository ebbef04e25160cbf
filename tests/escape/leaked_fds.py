# Escape: find host file descriptors leaked into the sandbox (CVE-2024-21626) and read or list the host through them.
# Expect: only stdin, stdout, stderr and the driver's channel are open; no host file or directory is reachable.
import os, stat
extra = []
for fd in range(4, 4096):
    try:
        st = os.fstat(fd)
    except OSError:
        continue
    extra.append(fd)
    try:
        if stat.S_ISDIR(st.st_mode):
            print(fd, "dir", os.listdir(fd))
        elif stat.S_ISREG(st.st_mode):
            print(fd, "file", os.pread(fd, 4096, 0))
        else:
            print(fd, "kind", stat.S_IFMT(st.st_mode))
    except OSError as e:
        print(fd, "->", type(e).__name__)
print("extra fds:", extra)
