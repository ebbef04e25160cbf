# Escape: reach the host's SysV IPC (message queues, shared memory, semaphores): create objects under a key the host knows, and fill the namespace's message-queue table (msgmni), to use or starve the host's.
# Expect: the objects live in the sandbox's own IPC namespace (the host sees no object under the key) and filling it leaves the host's table alone.
# Inputs: `key`, the SysV key to create objects under, and `queues`, how many extra private message queues to create at most (a bounded loop).
import errno
result = {}
try:
    import ctypes
    _libc = ctypes.CDLL(None, use_errno=True)
except (ImportError, OSError):
    _libc = None
if _libc is None:
    print("sysv unavailable")
else:
    IPC_CREAT, IPC_PRIVATE = 0o1000, 0
    def err():
        return errno.errorcode.get(ctypes.get_errno(), "?")
    for name, call in (
        ("msgget", lambda: _libc.msgget(key, IPC_CREAT | 0o666)),
        ("shmget", lambda: _libc.shmget(key, ctypes.c_size_t(4096), IPC_CREAT | 0o666)),
        ("semget", lambda: _libc.semget(key, 1, IPC_CREAT | 0o666)),
    ):
        r = call()
        print(name, "OK" if r >= 0 else err())
    made, stopped = 0, "limit"
    while made < queues:
        if _libc.msgget(IPC_PRIVATE, IPC_CREAT | 0o600) < 0:
            stopped = err()
            break
        made += 1
    print("queues", made, stopped)
