# Escape: reach the kernel's dangerous interfaces through ctypes: ptrace (of itself and of a host process), mount, new namespaces (unshare, setns, clone), keyrings, bpf, perf, io_uring, userfaultfd, process_vm_readv, kexec, module loading, the new mount API, clone3, POSIX message queues, AF_ALG sockets.
# Expect: every call fails with EPERM (clone3 with ENOSYS, so libc falls back to clone); the host process is not traced and the host's mount table is unchanged.
import ctypes, errno, os, platform, socket
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR = {
    "x86_64": dict(ptrace=101, mount=165, unshare=272, setns=308, clone=56, keyctl=250, add_key=248, bpf=321,
                   perf_event_open=298, userfaultfd=323, process_vm_readv=310, kexec_load=246, init_module=175, pivot_root=155,
                   mq_open=240),
    "aarch64": dict(ptrace=117, mount=40, unshare=97, setns=268, clone=220, keyctl=219, add_key=217, bpf=280,
                    perf_event_open=241, userfaultfd=282, process_vm_readv=270, kexec_load=104, init_module=105, pivot_root=41,
                    mq_open=180),
}[platform.machine()]
NR.update(io_uring_setup=425, open_tree=428, fsopen=430, clone3=435)
CLONE_NEWUSER, SIGCHLD = 0x10000000, 17
calls = {
    "ptrace_traceme": ("ptrace", 0, 0, 0, 0),
    "ptrace_attach_host": ("ptrace", 16, host_pid, 0, 0),
    "mount": ("mount", b"none", b"/tmp", b"tmpfs", 0, 0),
    "unshare_user": ("unshare", CLONE_NEWUSER),
    "setns": ("setns", 0, 0),
    "clone_newuser": ("clone", CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0),
    "keyctl": ("keyctl", 0, -3, 0),
    "add_key": ("add_key", b"user", b"airlock", b"x", 1, -3),
    "bpf": ("bpf", 0, 0, 0),
    "perf_event_open": ("perf_event_open", 0, 0, -1, -1, 0),
    "userfaultfd": ("userfaultfd", 0),
    "process_vm_readv": ("process_vm_readv", 1, 0, 0, 0, 0, 0),
    "kexec_load": ("kexec_load", 0, 0, 0, 0),
    "init_module": ("init_module", 0, 0, b""),
    "pivot_root": ("pivot_root", b".", b"."),
    "io_uring_setup": ("io_uring_setup", 1, 0),
    "open_tree": ("open_tree", -100, b"/", 1),
    "fsopen": ("fsopen", b"tmpfs", 0),
    "clone3": ("clone3", 0, 0),
    "mq_open": ("mq_open", b"airlock-escape", 0o100 | 0o2, 0o600, 0),
}
for name, (fn, *args) in calls.items():
    conv = [ctypes.c_char_p(a) if isinstance(a, bytes) else ctypes.c_long(a) for a in args]
    r = libc.syscall(ctypes.c_long(NR[fn]), *conv)
    if r == 0 and fn == "clone":
        os._exit(0)
    e = ctypes.get_errno() if r < 0 else 0
    print(name, errno.errorcode.get(e, "OK") if r < 0 else "OK")
try:
    socket.socket(38, socket.SOCK_SEQPACKET, 0)
    print("af_alg OK")
except OSError as e:
    print("af_alg", errno.errorcode.get(e.errno, e.errno))
