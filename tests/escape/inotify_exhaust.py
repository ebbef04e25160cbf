# Escape: exhaust the per-user inotify budget the kernel charges up to the creator of the sandbox's user namespace (host root, when airlock runs as root): open inotify instances until EMFILE, or add watches over the host's /usr until ENOSPC, and keep them, so that host root's next inotify_init() or inotify_add_watch() fails (tail -f falls back to polling) and every other sandbox gets none.
# Expect: the sandbox stops at its own small share; the host and a second sandbox can still make instances and watches.
# Inputs: `instances` and `watches`, how many of each to try at most (bounded loops). What is made stays open after the cell.
import errno, os
held_inotify = []
made = {"instances": 0, "watches": 0}
stopped = {"instances": "limit", "watches": "limit"}
try:
    import ctypes
    _libc = ctypes.CDLL(None, use_errno=True)
    _init, _add = _libc.inotify_init1, _libc.inotify_add_watch
except (ImportError, OSError, AttributeError) as e:
    _init = None
    stopped = {"instances": "unavailable", "watches": "unavailable"}
if _init is not None:
    # IN_MASK_CREATE: a path whose inode this instance already watches (a link, a
    # hard link) fails with EEXIST instead of counting twice.
    IN_CLOEXEC, IN_ATTRIB, IN_DONT_FOLLOW, IN_MASK_CREATE = 0o2000000, 0x4, 0x02000000, 0x10000000
    while made["instances"] < instances:
        fd = _init(IN_CLOEXEC)
        if fd < 0:
            stopped["instances"] = errno.errorcode.get(ctypes.get_errno(), "?")
            break
        held_inotify.append(fd)
        made["instances"] += 1
    def _paths():
        for root, dirs, files in os.walk("/usr"):
            yield root
            for f in files:
                yield os.path.join(root, f)
    if held_inotify and watches > 0:
        done = False
        for p in _paths():
            b = p.encode()
            for fd in held_inotify:
                if made["watches"] >= watches:
                    done = True
                    break
                if _add(fd, b, IN_ATTRIB | IN_DONT_FOLLOW | IN_MASK_CREATE) < 0:
                    e = ctypes.get_errno()
                    if e in (errno.ENOSPC, errno.ENOMEM):
                        stopped["watches"] = errno.errorcode[e]
                        done = True
                        break
                    continue  # already watched, unreadable or vanished: try the next
                made["watches"] += 1
            if done:
                break
        else:
            stopped["watches"] = "paths"
print("instances", made["instances"], stopped["instances"])
print("watches", made["watches"], stopped["watches"])
