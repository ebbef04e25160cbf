# Escape: exhaust the locked-memory budget (RLIMIT_MEMLOCK) the kernel charges up to the creator of the sandbox's user namespace: lock SysV shared memory (SHM_LOCK) until refused, and keep it, so that no other sandbox can lock any; and mlock more than a little memory.
# Expect: the sandbox stops at its own small share; a second sandbox can still lock a page; mlock beyond the sandbox's limit fails.
# Inputs: `segments` (how many to lock at most, a bounded loop) of `segment_bytes` each, and `mlock_bytes` to mlock once. Segments stay locked after the cell (in the sandbox's IPC namespace).
import errno, mmap
locked, stopped, mlocked = 0, "limit", "not tried"
try:
    import ctypes
    _libc = ctypes.CDLL(None, use_errno=True)
    _libc.shmget.restype = ctypes.c_int
    _shmget, _shmctl = _libc.shmget, _libc.shmctl
except (ImportError, OSError, AttributeError):
    _libc = None
    stopped = "unavailable"
if _libc is not None:
    IPC_PRIVATE, IPC_CREAT, SHM_LOCK = 0, 0o1000, 11
    while locked < segments:
        sid = _shmget(IPC_PRIVATE, ctypes.c_size_t(segment_bytes), IPC_CREAT | 0o600)
        if sid < 0:
            stopped = "shmget " + errno.errorcode.get(ctypes.get_errno(), "?")
            break
        if _shmctl(sid, SHM_LOCK, None) < 0:
            stopped = errno.errorcode.get(ctypes.get_errno(), "?")
            break
        locked += 1
    if mlock_bytes:
        buf = mmap.mmap(-1, mlock_bytes)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        if _libc.mlock(ctypes.c_void_p(addr), ctypes.c_size_t(mlock_bytes)) == 0:
            mlocked = "OK"
        else:
            mlocked = errno.errorcode.get(ctypes.get_errno(), "?")
print("segments", locked, stopped)
print("mlock", mlock_bytes, mlocked)
