# airlock's zygote: a trusted interpreter, itself inside a jail, that has imported a
# template's modules and forks one sandbox per request. It never runs user code.
#
# Started as `python -c BOOTSTRAP ZYGOTE_SOURCE DRIVER_SOURCE` with the control socket
# (SOCK_SEQPACKET, one message per frame) on fd 3. The host sends one JSON settings
# frame; the zygote imports the modules and answers `ready` (or `failed`). Then each
# `spawn` frame carries four descriptors (channel, stdout, stderr, setup socket):
#
#   zygote: setns(its own PID namespace) + unshare(PID): its next child is PID 1 of a
#           new PID namespace
#   zygote --fork--> child: PID 1 there; one fork per sandbox, whose exit the zygote
#           reaps and reports as an `exit` frame
#
# The child makes a mount namespace, mounts its own /proc (processes only), /tmp and
# /workspace, then unshares the user, IPC, UTS and network namespaces and maps its root
# to the zygote's (its mount namespace stays owned by the zygote's user namespace, so
# the sandbox can never mount or unmount anything) and sets its own inotify maxima in
# that user namespace. It sets descriptors and session,
# passes its workspace descriptor to the host over the setup socket (the host reads
# its host pid from the socket's credentials and moves it into a new cgroup), sets
# rlimits, waits for the host's go-ahead, then drops every capability, sets
# no_new_privs, applies Landlock and the seccomp filters -- the same sequence as a cold
# jail sandbox -- and only then runs the guest driver, which reads the first cell.

import ctypes
import gc
import json
import os
import select
import signal
import socket
import struct
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

PR_SET_SECCOMP = 22
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2

SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_RULE_PATH_BENEATH = 1

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.syscall.restype = ctypes.c_long


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


class StepFailed(Exception):
    pass


def _check(r, what):
    if r < 0:
        e = ctypes.get_errno()
        raise StepFailed("%s: %s" % (what, os.strerror(e)))
    return r


def _mount(src, target, fstype, flags, data, what):
    _check(
        _libc.mount(
            src and src.encode(),
            target.encode(),
            fstype and fstype.encode(),
            flags,
            data and data.encode(),
        ),
        what,
    )


def _write(path, text):
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise StepFailed("write %r to %s: %s" % (text, path, e.strerror)) from None


def _prctl(option, arg, what):
    return _check(_libc.prctl(option, arg, 0, 0, 0), what)


# -- the child's containment, in order --


def _next_child_in_new_pid_namespace(own_pid_ns):
    """The zygote: its next child is PID 1 of a new PID namespace. A process may
    create a PID namespace for its children only while they would go to its own, so
    it first points its children back there."""
    _children_in_own_pid_namespace(own_pid_ns)
    _check(_libc.unshare(CLONE_NEWPID), "unshare the PID namespace")


def _children_in_own_pid_namespace(own_pid_ns):
    """The zygote: its children go to its own PID namespace again (so nothing it might
    fork later lands in a sandbox's)."""
    _check(_libc.setns(own_pid_ns, CLONE_NEWPID), "return to the zygote's PID namespace")


def _own_namespaces():
    """The child, after its mounts: new user, IPC, UTS and network namespaces; root of
    the new user namespace maps to the zygote's root."""
    flags = CLONE_NEWUSER | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET
    _check(_libc.unshare(flags), "unshare the user, IPC, UTS and network namespaces")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", "0 0 1")
    _write("/proc/self/gid_map", "0 0 1")


def _own_file_systems(cfg, req, mpl):
    """The child: a mount namespace with a fresh /proc for its PID namespace, its own
    /tmp and /workspace (made while the child still has the zygote's capabilities:
    its PID namespace belongs to the zygote's user namespace). The /proc shows its
    processes only (subset=pid: none of the host's global files, no /proc/sys); on
    kernels without that, the whole procfs with /proc/sys read-only."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare the mount namespace")
    _mount(None, "/", None, MS_REC | MS_PRIVATE, None, "make every mount private")
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    if cfg["proc_subset"]:
        _mount("proc", "/proc", "proc", flags, "subset=pid", "mount a new /proc (processes only)")
    else:
        _mount("proc", "/proc", "proc", flags, None, "mount a new /proc")
        _mount("/proc/sys", "/proc/sys", None, MS_BIND | MS_REC, None, "bind /proc/sys")
        _mount(None, "/proc/sys", None, MS_BIND | MS_REMOUNT | MS_RDONLY | flags, None, "make /proc/sys read-only")
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, req["tmp_options"], "mount a tmpfs at /tmp")
    _mount("tmpfs", "/workspace", "tmpfs", MS_NOSUID | MS_NODEV, req["workspace_options"], "mount a tmpfs at /workspace")
    if mpl is not None:
        directory, name, data = mpl
        os.mkdir(directory, 0o700)
        fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


def _user_limits(cfg):
    """The child, in its new user namespace (holding CAP_SYS_RESOURCE there): its own
    inotify maxima. The kernel counts every sibling's inotify use against the zygote's
    host uid as well, so these keep one sandbox from taking the whole budget. The
    files are reached through the zygote's /proc/sys/user (opened once, before this
    child's own /proc hid it); they show the opener's current user namespace."""
    for name, value in cfg["user_limits"]:
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CLOEXEC, dir_fd=cfg["sysctl_dir"])
        except FileNotFoundError:
            continue  # no such counter in this kernel (no inotify): nothing to bound
        except OSError as e:
            raise StepFailed("open /proc/sys/user/%s: %s" % (name, e.strerror)) from None
        try:
            os.write(fd, str(value).encode())
        except OSError as e:
            raise StepFailed("limit user.%s to %s: %s" % (name, value, e.strerror)) from None
        finally:
            os.close(fd)


def _loopback_up():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        import fcntl

        req = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req)[:18])[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))
    finally:
        s.close()


def _rlimits(req):
    import resource

    for res, value in req["rlimits"]:
        resource.setrlimit(res, (value, value))


def _descriptors(chan, out, err, setup):
    """fds 0-3 are stdin (/dev/null), stdout, stderr and the channel; every other
    descriptor but the setup socket is closed."""
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.dup2(chan, 3)
    os.closerange(4, setup)
    os.closerange(setup + 1, 1 << 16)


def _drop_capabilities(cfg):
    _prctl(PR_SET_SECUREBITS, cfg["securebits"], "set securebits")
    for cap in range(min(cfg["last_cap"], 63) + 1):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 and ctypes.get_errno() != 22:
            _check(-1, "drop capability %d from the bounding set" % cap)
    if _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 and ctypes.get_errno() != 22:
        _check(-1, "clear the ambient capabilities")
    header = _CapHeader(0x20080522, 0)
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), data), "drop every capability")


def _landlock(policy):
    attr = struct.pack("<QQQ", policy["handled_fs"], 0, policy["scoped"])[: policy["attr_size"]]
    buf = ctypes.create_string_buffer(attr, len(attr))
    rs = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, buf, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
    if rs < 0:
        if ctypes.get_errno() in (38, 95):  # ENOSYS, EOPNOTSUPP: no Landlock, not an error
            return
        _check(-1, "create the Landlock ruleset")
    try:
        for path, access in policy["rules"]:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = ctypes.create_string_buffer(struct.pack("<Qi", access & policy["handled_fs"], fd), 12)
                _check(
                    _libc.syscall(SYS_LANDLOCK_ADD_RULE, ctypes.c_int(rs), ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH), rule, ctypes.c_uint32(0)),
                    "add the Landlock rule for %s" % path,
                )
            finally:
                os.close(fd)
        _check(_libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(rs), ctypes.c_uint32(0)), "apply the Landlock rules")
    finally:
        os.close(rs)


def _seccomp_programs(hex_programs):
    """The zygote, once: each filter as a ready `sock_fprog` (with the buffer it points
    to, kept alive beside it), so a child only passes its address to the kernel."""
    programs = []
    for h in hex_programs:
        prog = bytes.fromhex(h)
        buf = ctypes.create_string_buffer(prog, len(prog))
        fprog = _SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
        programs.append((ctypes.addressof(fprog), fprog, buf))
    return programs


def _seccomp(programs):
    for address, _, _ in programs:
        _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, address, 0, 0), "install the seccomp filters")


def _send_failure(setup, what):
    try:
        os.write(setup, b"E" + str(what).encode("utf-8", "replace")[:4000])
    except OSError:
        pass


def _reseed(driver):
    # Siblings must not share random state: `random` reseeds itself after fork; the
    # driver also reseeds numpy's global generator, and tempfile's name generator is
    # dropped (it detects forks by pid, and every sandbox is pid 1).
    driver["_reseed"]()
    tf = sys.modules.get("tempfile")
    if tf is not None:
        tf._name_sequence = None


def _child(cfg, req, fds, driver, mpl):
    """PID 1 of its own namespaces. Never returns."""
    chan, out, err, setup = fds
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        _own_file_systems(cfg, req, mpl)
        _own_namespaces()
        _user_limits(cfg)
        socket.sethostname(cfg["hostname"])
        _loopback_up()
        _descriptors(chan, out, err, setup)
        os.setsid()
        os.chdir("/workspace")
        ws = os.open("/workspace", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        ctl = socket.socket(fileno=setup)
        socket.send_fds(ctl, [b"W"], [ws])
        os.close(ws)
        # After every step that opens a descriptor, as in a cold sandbox, and after the
        # user namespace is made: the kernel records the rlimits a process has when it
        # makes one as the most the level above (the zygote's user, shared by every
        # sibling) may hold; set before, one child's share would be its siblings' cap.
        _rlimits(req)
        # The go-ahead carries the environment: it reaches this child only, never the
        # zygote, whose freed memory every later sibling inherits.
        go = ctl.recv(1 << 20)
        if go[:1] != b"G":
            os._exit(125)  # the host gave up
        env = json.loads(go[1:])
        # In its own cgroup now: a cgroup namespace rooted there, as a cold sandbox has.
        _check(_libc.unshare(CLONE_NEWCGROUP), "enter a new cgroup namespace")
        _drop_capabilities(cfg)
        _prctl(PR_SET_NO_NEW_PRIVS, 1, "set no_new_privs")
        if cfg["landlock"] is not None:
            _landlock(cfg["landlock"])
        _seccomp(cfg["seccomp"])
        os.environ.clear()
        os.environ.update(env)
        _reseed(driver)
        ctl.close()
    except BaseException as e:  # noqa: BLE001 - every failure is reported, then exit
        _send_failure(setup, e)
        os._exit(126)
    code = 1
    try:
        code = driver["main"](["3"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001
        code = 1
    finally:
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except BaseException:  # noqa: BLE001
                pass
    os._exit(code or 0)


def _spawn(cfg, req, fds, driver, mpl, own_pid_ns):
    """Forks the sandbox, PID 1 of a new PID namespace, and returns its pid. The
    zygote does not wait: it serves the next request while the child sets up."""
    try:
        _next_child_in_new_pid_namespace(own_pid_ns)
        pid = os.fork()
    except (OSError, StepFailed):
        for fd in fds:
            os.close(fd)
        raise
    if pid == 0:
        try:
            _child(cfg, req, fds, driver, mpl)
        finally:
            os._exit(126)
    for fd in fds:
        os.close(fd)
    _children_in_own_pid_namespace(own_pid_ns)
    return pid


def _send(ctl, obj):
    ctl.send(json.dumps(obj).encode())


def _import_all(cfg):
    imported, missing = [], []
    for name in cfg["modules"]:
        try:
            __import__(name)
            imported.append(name)
        except ImportError as e:
            if not cfg["optional_modules"]:
                raise StepFailed("import %s failed: %s: %s" % (name, type(e).__name__, e))
            missing.append(name)
    return imported, missing


def _threads():
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def main(driver_source):
    ctl = socket.socket(fileno=3)
    cfg = json.loads(ctl.recv(1 << 20))
    cfg["seccomp"] = _seccomp_programs(cfg["seccomp"])
    cfg["sysctl_dir"] = None
    # The driver's code, loaded once as a module namespace (not as __main__).
    driver = {"__name__": "__airlock_driver__", "__builtins__": __builtins__}
    exec(compile(driver_source, "<airlock-driver>", "exec"), driver)
    try:
        imported, missing = _import_all(cfg)
        n = _threads()
        if n != 1:
            raise StepFailed(
                "the template's modules started %d threads in the zygote; forking would copy them "
                "half-made (set OPENBLAS_NUM_THREADS=1 and similar, or remove the module)" % (n - 1)
            )
        # What every fork needs, tried once now, so a zygote that cannot fork says so
        # instead of answering ready.
        own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        _next_child_in_new_pid_namespace(own_pid_ns)
        _children_in_own_pid_namespace(own_pid_ns)
        if cfg["user_limits"]:
            cfg["sysctl_dir"] = os.open("/proc/sys/user", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except BaseException as e:  # noqa: BLE001
        _send(ctl, {"type": "failed", "error": "%s: %s" % (type(e).__name__, e)})
        return 1
    # What the driver and the children's setup import on first use, imported here
    # once, so each child shares them instead of importing (and writing) its own.
    for name in ("io", "binascii", "traceback", "linecache", "resource", "fcntl", "_thread", "_signal"):
        try:
            __import__(name)
        except ImportError:
            pass
    mpl = None
    if cfg.get("mpl"):
        try:
            with open(cfg["mpl"], "rb") as f:
                mpl = (os.path.dirname(cfg["mpl"]), os.path.basename(cfg["mpl"]), f.read())
        except OSError:
            mpl = None
    # Everything imported so far is never collected, so the collector never writes to
    # (and un-shares) the pages the children share with the zygote.
    gc.collect()
    gc.freeze()
    _send(ctl, {"type": "ready", "imported": imported, "missing": missing, "pid": os.getpid()})

    wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children = {}  # pid -> the request id: its exit is reported under the id
    while True:
        while True:
            try:
                pid, status, ru = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            rid = children.pop(pid, None)
            if rid is not None:
                cpu_ms = int((ru.ru_utime + ru.ru_stime) * 1000)
                _send(ctl, {"type": "exit", "id": rid, "status": status, "cpu_ms": cpu_ms, "maxrss_kb": ru.ru_maxrss})
        try:
            ready, _, _ = select.select([ctl, wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in ready:
            try:
                os.read(wake_r, 4096)
            except BlockingIOError:
                pass
        if ctl not in ready:
            continue
        msg, fds, flags, _ = socket.recv_fds(ctl, 1 << 16, 8)
        if not msg and not fds:
            return 0  # the host closed the control socket
        req = None
        try:
            req = json.loads(msg)
            truncated = flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC)
            well_formed = isinstance(req, dict) and req.get("type") == "spawn" and isinstance(req.get("id"), int)
            if truncated or not well_formed or len(fds) != 4:
                raise ValueError("malformed spawn request")
        except ValueError as e:  # a bad frame fails that request, never the zygote
            for fd in fds:
                os.close(fd)
            rid = req.get("id") if isinstance(req, dict) else None
            _send(ctl, {"type": "spawned", "id": rid, "error": str(e)})
            continue
        try:
            pid = _spawn(cfg, req, fds, driver, mpl, own_pid_ns)
        except (OSError, StepFailed) as e:
            _send(ctl, {"type": "spawned", "id": req["id"], "error": "fork failed: %s" % e})
            continue
        # Recorded before the next wait4, so its exit always finds its request.
        children[pid] = req["id"]
        _send(ctl, {"type": "spawned", "id": req["id"], "pid": pid})


sys.exit(main(sys.argv[2]))
