# The floor under `airlock bench --burst` on `jail`: how many children per second a
# bare interpreter can fork into the namespaces a zygote's child makes, when each child
# does nothing else. No airlock code runs: no cgroup, capabilities, Landlock, seccomp,
# program or result. Run as `python -c THIS TOTAL CONCURRENCY [MODULE,...]`; prints one
# JSON line {"samples_ms": [...], "elapsed_s": ..., "cpu_s": ...} (cpu_s: the CPU time
# of the workers and their children) or exits non-zero with why.
#
# Each worker is a copy of an interpreter that has imported MODULES (as a template's
# zygote has) and, per child, does what the zygote does: points its next child at a
# new PID namespace (setns back to its own, unshare(CLONE_NEWPID)) and forks; the child
# makes a mount namespace, mounts /proc and a tmpfs on /tmp, unshares the user, IPC,
# UTS and network namespaces, maps its root, and exits.

import ctypes
import gc
import json
import os
import resource
import sys
import time

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x2, 0x4, 0x8

libc = ctypes.CDLL(None, use_errno=True)


def check(r, what):
    if r < 0:
        raise OSError(ctypes.get_errno(), "%s: %s" % (what, os.strerror(ctypes.get_errno())))


def write(path, text):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def become_root():
    """Outside a privileged process: a user namespace of our own, as root there."""
    uid, gid = os.geteuid(), os.getegid()
    if uid == 0:
        return
    check(libc.unshare(CLONE_NEWUSER), "unshare the user namespace (unprivileged user namespaces off?)")
    write("/proc/self/setgroups", "deny")
    write("/proc/self/uid_map", "0 %d 1" % uid)
    write("/proc/self/gid_map", "0 %d 1" % gid)


def child():
    check(libc.unshare(CLONE_NEWNS), "unshare the mount namespace")
    check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make mounts private")
    check(libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None), "mount /proc")
    check(libc.mount(b"tmpfs", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV, b"size=1m"), "mount a tmpfs")
    check(libc.unshare(CLONE_NEWUSER | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET), "unshare user, IPC, UTS, net")
    write("/proc/self/setgroups", "deny")
    write("/proc/self/uid_map", "0 0 1")
    write("/proc/self/gid_map", "0 0 1")


def worker(count, own_pid_ns, out):
    samples = []
    for _ in range(count):
        t = time.perf_counter()
        check(libc.setns(own_pid_ns, CLONE_NEWPID), "setns to the worker's PID namespace")
        check(libc.unshare(CLONE_NEWPID), "unshare the PID namespace")
        pid = os.fork()
        if pid == 0:
            try:
                child()
            except BaseException as e:  # noqa: BLE001
                os.write(2, ("child: %s\n" % e).encode())
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            raise RuntimeError("a child failed (status %d)" % status)
        samples.append((time.perf_counter() - t) * 1000.0)
    os.write(out, json.dumps(samples).encode())


def run(total, concurrency):
    """In a PID namespace of our own, so setns back to it is allowed even unprivileged."""
    workers = []
    start = time.perf_counter()
    for i in range(concurrency):
        r, w = os.pipe()
        count = total // concurrency + (1 if i < total % concurrency else 0)
        pid = os.fork()
        if pid == 0:
            os.close(r)
            code = 0
            try:
                worker(count, os.open("/proc/self/ns/pid", os.O_RDONLY), w)
            except BaseException as e:  # noqa: BLE001
                os.write(2, ("%s\n" % e).encode())
                code = 1
            os._exit(code)
        os.close(w)
        workers.append((pid, r))
    samples, failed = [], False
    for pid, r in workers:
        data = b""
        while True:
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            data += chunk
        _, status = os.waitpid(pid, 0)
        failed = failed or status != 0
        if data:
            samples.extend(json.loads(data))
    if failed or not samples:
        return 1
    elapsed = time.perf_counter() - start
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)  # workers and children, all reaped
    cpu = ru.ru_utime + ru.ru_stime
    print(json.dumps({"samples_ms": samples, "elapsed_s": elapsed, "cpu_s": cpu}), flush=True)
    return 0


def main():
    total, concurrency = int(sys.argv[1]), max(1, int(sys.argv[2]))
    for name in filter(None, (sys.argv[3] if len(sys.argv) > 3 else "").split(",")):
        try:
            __import__(name)
        except ImportError as e:
            print("%s is not importable: %s" % (name, e), file=sys.stderr)
            return 1
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:  # as a zygote refuses to fork with threads
        print("the imports started %d threads" % (threads - 1), file=sys.stderr)
        return 1
    try:
        become_root()
        check(libc.unshare(CLONE_NEWPID | CLONE_NEWNS), "unshare the PID and mount namespaces")
    except OSError as e:
        print(e, file=sys.stderr)
        return 1
    gc.collect()
    gc.freeze()
    pid = os.fork()  # init of that PID namespace; the workers are its children
    if pid == 0:
        code = 1
        try:
            code = run(total, concurrency)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


sys.exit(main())
