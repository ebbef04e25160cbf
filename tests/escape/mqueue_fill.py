# Escape: exhaust the POSIX message-queue budget (RLIMIT_MSGQUEUE bytes) the kernel charges up to the creator of the sandbox's user namespace: create queues until the budget is gone, and keep them, so that host root's next mq_open() fails.
# Expect: the sandbox cannot create a queue (mq_open is denied) or stops at its own share; the host can still open a queue.
# (Landlock refusing to *open* the new queue, EACCES, does not stop it being created and charged: such queues are counted too.)
# Inputs: `queues`, how many to create at most (a bounded loop). They stay after the cell (in the sandbox's IPC namespace).
import errno, os, platform
made, stopped = 0, "limit"
try:
    import ctypes
    _libc = ctypes.CDLL(None, use_errno=True)
    _libc.syscall.restype = ctypes.c_long
    NR_MQ_OPEN = {"x86_64": 240, "aarch64": 180}[platform.machine()]
except (ImportError, OSError, KeyError) as e:
    _libc = None
    stopped = "unavailable"
if _libc is not None:
    O_RDWR, O_CREAT, O_EXCL = 0o2, 0o100, 0o200
    def mq_open(name):
        r = _libc.syscall(ctypes.c_long(NR_MQ_OPEN), ctypes.c_char_p(name), ctypes.c_long(O_RDWR | O_CREAT | O_EXCL), ctypes.c_long(0o600), ctypes.c_void_p(0))
        return 0 if r >= 0 else ctypes.get_errno()
    while made < queues:
        name = ("airlock-escape-mq-%d-%d" % (os.getpid(), made)).encode()
        e = mq_open(name)
        if e == errno.EACCES and mq_open(name) == errno.EEXIST:
            e = 0  # made, though not opened
        if e:
            stopped = errno.errorcode.get(e, "?")
            break
        made += 1
print("queues", made, stopped)
