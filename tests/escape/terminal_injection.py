# Escape: inject keystrokes into a controlling terminal (TIOCSTI, CVE-2017-5226) or the Linux console (TIOCLINUX), also with garbage in the request's high bits.
# Expect: there is no terminal to open (new session, no /dev/tty) and every such ioctl fails with EPERM.
import errno, fcntl, os
try:
    os.open("/dev/tty", os.O_RDWR)
    print("/dev/tty opened")
except OSError as e:
    print("/dev/tty", errno.errorcode.get(e.errno, e.errno))
print("session leader", os.getsid(0) == os.getpid())
for fd in (0, 1, 2):
    for req in (0x5412, 0x541C, 0x5412 | (0xDEAD << 32)):
        try:
            fcntl.ioctl(fd, req, b"x")
            print(fd, hex(req), "OK")
        except OSError as e:
            print(fd, hex(req), errno.errorcode.get(e.errno, e.errno))
