# airlock guest driver -- protocol version 1.
#
# This program runs inside every airlock sandbox (native CPython in the process,
# jail and microvm backends; CPython-on-WASI in the wasm backend). It receives cells
# from the host over a framed channel, runs them with IPython-like semantics and
# sends back results, errors and a final "done" frame. stdout and stderr are not
# part of the channel: the host reads them from the process's own fds 1 and 2, so
# output from C code and child processes is captured too.
#
# Frames: a 4-byte big-endian length, then that many bytes of UTF-8 JSON (an object
# with a "type"). Host -> guest: exec, shutdown, configure, guard. Guest -> host:
# hello, result, error, done. See crates/airlock-guest/src/protocol.rs for the full schema.
#
# Start-up cost matters (a sandbox start is measured against a bare `python3 -c`),
# so this file imports only modules that are already loaded at start-up or are
# cheap C modules; everything else is imported when first needed.

import sys
import os
import _ast

PROTOCOL = 1
# The host compiles this file under a name of its own, so tracebacks can drop its frames.
_DRIVER_FILE = sys._getframe().f_code.co_filename
_MAX_TEXT = 1 << 20  # cap on one text/plain or text/html representation, in characters
# Text per "stream" frame, in characters: longer writes go as several frames, so every
# stream frame stays far below the host's limit for frames that are not results.
_STREAM_FRAME_CHARS = 1 << 16
# Error text sent to the host, in characters (the host keeps at most 16 KiB of a
# message and 64 KiB of a traceback, and cuts again what is longer).
_ERROR_NAME_CHARS = 256
_ERROR_VALUE_CHARS = 8 << 10
_ERROR_TRACEBACK_CHARS = 32 << 10


# ---- JSON through the C accelerator (the `json` package costs ~10 ms to import) ----

def _json_default(o):
    raise TypeError("not JSON serialisable: %s" % type(o).__name__)


def _make_json():
    try:
        import _json

        class _Ctx:
            strict = True
            object_hook = None
            object_pairs_hook = None
            parse_float = float
            parse_int = int
            parse_constant = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}.__getitem__
            memo = {}

        scan = _json.make_scanner(_Ctx())
        enc = _json.make_encoder({}, _json_default, _json.encode_basestring_ascii, None, ":", ",", False, False, False)

        def loads(s):
            obj, end = scan(s, 0)
            return obj

        def dumps(o):
            return "".join(enc(o, 0))

        if loads(dumps({"a": [1, "\u00e9", None, True, 2.5]})) != {"a": [1, "\u00e9", None, True, 2.5]}:
            raise ImportError("C JSON self-test failed")
        return loads, dumps
    except Exception:
        import json

        return json.loads, lambda o: json.dumps(o, separators=(",", ":"), allow_nan=False, default=_json_default)


loads, dumps = _make_json()


# ---- the channel ----

class Channel:
    """Length-prefixed JSON frames over a file descriptor (a socket or a pipe pair).

    Python-level output (sys.stdout / sys.stderr) travels as "stream" frames on the
    same channel, line-buffered, so its order relative to results is exact. Output
    written to the file descriptors directly (C code, child processes) reaches the
    host through the process's own fds 1 and 2.
    """

    def __init__(self, rfd, wfd):
        self.rfd = rfd
        self.wfd = wfd
        self._pending = []
        self._pending_len = 0
        self._pending_name = None
        # The thread writing a frame now, and whether an interrupt arrived meanwhile:
        # a frame is never left half-written (see _on_sigint).
        self.writer = None
        self.deferred_interrupt = False
        try:
            import _thread

            self._lock = _thread.allocate_lock()
            self._ident = _thread.get_ident
        except ImportError:  # a build without threads
            self._lock = None
            self._ident = lambda: 0

    def _read_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = os.read(self.rfd, n - len(buf))
            if not chunk:
                raise EOFError("host closed the channel")
            buf += chunk
        return bytes(buf)

    def recv(self):
        n = int.from_bytes(self._read_exact(4), "big")
        return loads(self._read_exact(n).decode("utf-8"))

    def _write(self, obj):
        data = dumps(obj).encode("utf-8")
        view = memoryview(len(data).to_bytes(4, "big") + data)
        self.writer = self._ident()
        try:
            while view:
                n = os.write(self.wfd, view)
                view = view[n:]
        finally:
            self.writer = None
        if self.deferred_interrupt:
            self.deferred_interrupt = False
            if _driver is not None and _driver.running:
                raise SandboxInterrupt(_STOPPED)

    def _flush_locked(self):
        if self._pending:
            text = "".join(self._pending)
            self._pending = []
            self._pending_len = 0
            for i in range(0, len(text), _STREAM_FRAME_CHARS):
                self._write({"type": "stream", "name": self._pending_name, "text": text[i:i + _STREAM_FRAME_CHARS]})

    def _locked(self, fn, *args):
        lock = self._lock
        if lock is not None:
            lock.acquire()
        try:
            return fn(*args)
        finally:
            if lock is not None:
                lock.release()

    def _stream_locked(self, name, text):
        if self._pending and self._pending_name != name:
            self._flush_locked()
        self._pending_name = name
        self._pending.append(text)
        self._pending_len += len(text)
        if "\n" in text or self._pending_len >= 8192:
            self._flush_locked()

    def _send_locked(self, obj):
        self._flush_locked()
        self._write(obj)

    def stream(self, name, text):
        """Queues output text; sent at a newline, at 8 KiB, or before any other frame."""
        self._locked(self._stream_locked, name, text)

    def flush_streams(self):
        self._locked(self._flush_locked)

    def send(self, obj):
        self._locked(self._send_locked, obj)


def _make_writer_class():
    import io

    class StreamWriter(io.TextIOBase):
        """sys.stdout / sys.stderr for user code: text goes to the channel as stream frames."""

        def __init__(self, channel, name, original):
            self._channel = channel
            self._name = name
            self._original = original

        def write(self, s):
            if not isinstance(s, str):
                raise TypeError("write() argument must be str, not %s" % type(s).__name__)
            if s:
                self._channel.stream(self._name, s)
            return len(s)

        def writable(self):
            return True

        def flush(self):
            self._channel.flush_streams()

        def fileno(self):
            return self._original.fileno()

        def isatty(self):
            return False

        @property
        def encoding(self):
            return "utf-8"

        @property
        def errors(self):
            return "strict"

        @property
        def buffer(self):
            return self._original.buffer

        @property
        def name(self):
            return "<%s>" % self._name

    return StreamWriter


# ---- rich representations (what Jupyter and E2B return) ----

_RICH = (
    ("_repr_html_", "text/html"),
    ("_repr_markdown_", "text/markdown"),
    ("_repr_svg_", "image/svg+xml"),
    ("_repr_png_", "image/png"),
    ("_repr_jpeg_", "image/jpeg"),
    ("_repr_latex_", "text/latex"),
    ("_repr_json_", "application/json"),
)


def _clip(s):
    if len(s) > _MAX_TEXT:
        return s[:_MAX_TEXT] + "\n...[truncated by airlock: %d characters in all]" % len(s)
    return s


def _cut(s, limit, keep_end):
    """`s` cut to about `limit` characters with a marker; with keep_end, its start and end."""
    if len(s) <= limit:
        return s
    marker = "\n...[truncated by airlock: %d characters in all]...\n" % len(s)
    if keep_end:
        half = limit // 2
        return s[:half] + marker + s[len(s) - half:]
    return s[:limit] + marker


def _b64(data):
    import binascii

    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _figure_png(fig):
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return _b64(buf.getvalue())


def _is_figure(value):
    mod = type(value).__module__ or ""
    return mod.startswith("matplotlib.") and type(value).__name__ == "Figure"


def _json_value(value, depth=0):
    """The value itself if it is plain JSON data (small enough), else raises."""
    if value is None or value is True or value is False or type(value) in (int, str):
        return value
    if type(value) is float:
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("not finite")
        return value
    if depth > 20:
        raise ValueError("too deep")
    if type(value) in (list, tuple):
        return [_json_value(v, depth + 1) for v in value]
    if type(value) is dict:
        out = {}
        for k, v in value.items():
            if type(k) is not str:
                raise ValueError("non-string key")
            out[k] = _json_value(v, depth + 1)
        return out
    raise ValueError("not JSON data")


def bundle(value):
    """A MIME bundle for `value`: text/plain always, richer forms where the object offers them."""
    data = {}
    try:
        data["text/plain"] = _clip(repr(value))
    except Exception as e:  # a broken __repr__ must not break the cell
        data["text/plain"] = "<unrepresentable %s: %s>" % (type(value).__name__, e)
    cls = type(value)
    for method, mime in _RICH:
        fn = getattr(cls, method, None)
        if fn is None:
            continue
        try:
            out = fn(value)
        except Exception:
            continue
        if out is None:
            continue
        if isinstance(out, tuple):  # (data, metadata)
            out = out[0]
        if mime in ("image/png", "image/jpeg"):
            if isinstance(out, (bytes, bytearray)):
                out = _b64(bytes(out))
            elif not isinstance(out, str):
                continue
        elif mime == "application/json":
            try:
                out = _json_value(out)
            except Exception:
                continue
        elif not isinstance(out, str):
            continue
        else:
            out = _clip(out)
        data[mime] = out
    if "image/png" not in data and _is_figure(value):
        try:
            data["image/png"] = _figure_png(value)
        except Exception:
            pass
    if "application/json" not in data:
        try:
            j = _json_value(value)
            if len(dumps(j)) <= _MAX_TEXT:
                data["application/json"] = j
        except Exception:
            pass
    return data


# ---- the driver ----

def _scrub(te, seen):
    """Removes the driver's own frames from a traceback (and its chained ones)."""
    if id(te) in seen:
        return
    seen.add(id(te))
    import traceback

    te.stack = traceback.StackSummary.from_list([f for f in te.stack if f.filename != _DRIVER_FILE])
    for other in (te.__cause__, te.__context__):
        if other is not None:
            _scrub(other, seen)
    for sub in getattr(te, "exceptions", None) or ():
        _scrub(sub, seen)


# ---- the guard's runtime layer (PEP 578 audit hooks) ----
#
# Installed when the host sends a "guard" frame, before the first guarded cell.
# Audit hooks cannot be removed, so a guarded sandbox stays guarded. The layer refuses
# at run time what the host's static check refuses in the source, for code that got
# past it: imports outside the allow-list, running programs, sockets (unless the
# network is allowed), files outside the workspace (writes) or outside the interpreter's
# own directories (reads), ctypes, frame and code-object access, exec/compile.
#
# Whose action is it? An event belongs to the nearest frame on the stack that is not
# "plumbing" (os, io, subprocess, ctypes, socket, pathlib, ... and the guard's own
# wrappers): the user's cells (code compiled as "<cell-N>" or running in the user's
# namespace), the import system (loading a module's code), a library (an allowed
# package such as pandas opening its data files), or the driver. The allow-list of
# import statements applies to the user's code only; C code that imports helpers lazily
# (datetime's _strptime, numpy's internals) is not the user's import statement. The
# rules on programs, sockets, file paths and ctypes-by-name apply to everyone.

class GuardViolation(PermissionError):
    """The airlock guard refused this action. A PermissionError, so that a library
    expecting an OSError from a refused file or program degrades gracefully."""


# Modules whose frames act for their caller.
_GUARD_PLUMBING = frozenset((
    "os", "posix", "posixpath", "genericpath", "io", "_pyio", "codecs", "encodings", "pathlib", "shutil",
    "tempfile", "glob", "fnmatch", "subprocess", "pty", "ctypes", "socket", "selectors", "ssl", "urllib",
    "http", "ftplib", "smtplib", "multiprocessing", "concurrent", "asyncio", "threading", "pickle",
    "_compat_pickle", "copyreg", "marshal", "functools", "contextlib", "inspect", "linecache",
    "tokenize", "traceback", "zipfile", "tarfile", "gzip", "bz2", "lzma", "shelve", "dbm", "webbrowser",
    "sqlite3", "gc", "types", "operator", "builtins", "code", "codeop", "pydoc", "pdb", "bdb", "cmd",
    "sys", "runpy", "pkgutil",
))
_GUARD_PLUMBING_MODULES = frozenset(("numpy.ctypeslib",))
# The import system: it acts for its caller when importing, and runs module code itself.
_GUARD_IMPORT_SYSTEM = frozenset(("importlib", "_frozen_importlib", "_frozen_importlib_external", "zipimport"))
# Modules the user's code may never load, whatever triggers the import.
_GUARD_NEVER = frozenset((
    "os", "posix", "subprocess", "_posixsubprocess", "pty", "sys", "builtins", "importlib", "ctypes",
    "_ctypes", "cffi", "pickle", "_pickle", "marshal", "shelve", "dill", "socket", "_socket", "ssl", "gc",
    "inspect", "code", "codeop", "multiprocessing", "_multiprocessing", "threading", "_thread", "signal",
    "shutil", "pathlib", "webbrowser", "pdb", "bdb", "pydoc", "sqlite3", "_sqlite3", "resource", "fcntl",
    "mmap", "urllib", "http", "ftplib", "smtplib", "telnetlib", "asyncio", "_winapi", "nt",
))
_GUARD_PROCESS_EVENTS = frozenset((
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.startfile",
    "subprocess.Popen", "pty.spawn", "os.kill", "os.killpg", "signal.pthread_kill", "webbrowser.open",
))
_GUARD_NETWORK_EVENTS = frozenset((
    "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
    "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo", "urllib.Request",
    "http.client.connect", "ftplib.connect", "smtplib.connect", "poplib.connect", "imaplib.open",
    "nntplib.connect", "telnetlib.Telnet.open",
))
# Events refused when the user's code causes them directly.
_GUARD_USER_EVENTS = {
    "exec": "exec() of code objects is not allowed",
    "compile": "compile() is not allowed",
    "code.__new__": "building code objects is not allowed",
    "function.__new__": "building functions from code objects is not allowed",
    "object.__getattr__": "reading frames, code objects and tracebacks is not allowed",
    "sys._getframe": "reading interpreter frames is not allowed",
    "sys._current_frames": "reading interpreter frames is not allowed",
    "sys.settrace": "tracing is not allowed",
    "sys.setprofile": "profiling hooks are not allowed",
    "sys.addaudithook": "adding audit hooks is not allowed",
    "gc.get_objects": "walking the object graph is not allowed",
    "gc.get_referrers": "walking the object graph is not allowed",
    "gc.get_referents": "walking the object graph is not allowed",
    "marshal.loads": "marshal is not allowed",
    "marshal.load": "marshal is not allowed",
    "builtins.input": "input() is not allowed: there is no interactive input",
    "builtins.breakpoint": "breakpoint() is not allowed: there is no debugger",
    "resource.setrlimit": "changing resource limits is not allowed",
    "resource.prlimit": "changing resource limits is not allowed",
    "fcntl.ioctl": "ioctl() is not allowed",
    "sqlite3.enable_load_extension": "loading sqlite extensions is not allowed",
    "sqlite3.load_extension": "loading sqlite extensions is not allowed",
}
# (event, indexes of arguments that are paths written)
_GUARD_WRITE_EVENTS = {
    "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.chmod": (0,), "os.chown": (0,),
    "os.truncate": (0,), "os.utime": (0,), "os.rename": (0, 1), "os.link": (1,), "os.symlink": (1,),
    "os.chflags": (0,), "os.lchflags": (0,), "os.setxattr": (0,), "os.removexattr": (0,),
    "shutil.rmtree": (0,), "shutil.copyfile": (1,), "shutil.copymode": (1,), "shutil.copystat": (1,),
    "shutil.copytree": (1,), "shutil.move": (0, 1), "shutil.unpack_archive": (1,), "sqlite3.connect": (0,),
}
_GUARD_READ_EVENTS = {"os.listdir": (0,), "os.scandir": (0,), "shutil.copyfile": (0,), "shutil.copytree": (0,)}
# ctypes events refused whoever causes them: resolving C symbols by name, calling C
# function pointers, reading raw addresses. (The allowed packages use ctypes only for
# types and buffers.)
_GUARD_CTYPES_ANYONE = frozenset((
    "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.call_function", "ctypes.cdata", "ctypes.PyObj_FromPtr",
    "ctypes.string_at", "ctypes.wstring_at", "ctypes.memoryview_at",
))
_GUARD_PICKLE_BUILTINS = frozenset((
    "list", "dict", "set", "frozenset", "tuple", "slice", "range", "complex", "bytearray", "bytes", "int",
    "float", "str", "bool", "object",
))


def _guard_settings(policy):
    """The parts of a policy both the hook and the user's builtins need (immutable)."""
    allowed = tuple(str(m) for m in policy["allowed_imports"])
    return {
        "profile": str(policy["profile"]),
        "allowed": allowed,
        "exact": frozenset(m for m in allowed if not m.endswith(".*")),
        "subtrees": tuple(m[:-2] for m in allowed if m.endswith(".*")),
        "allowed_text": ", ".join(allowed),
        "allow_network": bool(policy["allow_network"]),
        "private_ok": bool(policy["private_attributes"]),
        "denied_attrs": frozenset(str(a) for a in policy["denied_attributes"]),
        "safe_dunders": frozenset(str(a) for a in policy["safe_dunders"]),
        "denied_builtins": tuple(str(b) for b in policy["denied_builtins"]),
    }


def _make_user_builtins(cfg, user_globals):
    """The builtins of the user's namespace: a guarded __import__, getattr, setattr and
    delattr, and refusing stand-ins for the denied builtins. Returns (dict, codes of the
    wrappers). Nothing here is shared with the audit hook: replacing a closure cell of
    these functions changes them, never the hook."""
    import builtins

    getframe = sys._getframe
    real_import = builtins.__import__
    real_getattr, real_setattr, real_delattr = getattr, setattr, delattr
    modules = sys.modules
    module_type = type(sys)
    _type, _str, _bytes = type, str, bytes
    profile, exact, subtrees = cfg["profile"], cfg["exact"], cfg["subtrees"]
    allowed_text, private_ok = cfg["allowed_text"], cfg["private_ok"]
    denied_attrs, safe_dunders = cfg["denied_attrs"], cfg["safe_dunders"]
    never_roots = _GUARD_NEVER
    try:
        import opcode
        import_op = opcode.opmap["IMPORT_NAME"]
    except Exception:
        import_op = -1

    def refusal(what):
        return GuardViolation("airlock guard (profile '%s'): %s" % (profile, what))

    def import_ok(name):
        if name in exact or name == "__future__":
            return True
        for p in subtrees:
            if name == p or name.startswith(p + "."):
                return True
        return False

    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
        # Called for the import statements of code whose builtins are these, and by C
        # code that imports a helper while such code runs (PyImport_Import uses the
        # running frame's __import__). Only the former is the user's import.
        caller = getframe(1)
        code = caller.f_code
        statement = import_op >= 0 and code.co_code[caller.f_lasti:caller.f_lasti + 1] == _bytes((import_op,))
        user = caller.f_globals is user_globals or code.co_filename[:6] == "<cell-"
        if _type(name) is not _str:
            return real_import(name, globals, locals, fromlist, level)
        if user and statement:
            if level:
                raise refusal("relative imports are not allowed; import allowed modules by their absolute name")
            if not import_ok(name):
                raise refusal("import of %r is not allowed; allowed imports: %s" % (name, allowed_text))
            if fromlist:
                real_import(name, globals, locals, (), 0)
                target = modules.get(name)
                d = real_getattr(target, "__dict__", None) if target is not None else None
                for item in fromlist:
                    if _type(item) is not _str or item == "*" or import_ok(name + "." + item):
                        continue
                    bad = _type(d[item]) is module_type if d is not None and item in d else True
                    if bad:
                        raise refusal(
                            "from %s import %s: %r is a module that is not allowed; allowed imports: %s"
                            % (name, item, name + "." + item, allowed_text)
                        )
        elif name.partition(".")[0] in never_roots and not import_ok(name):
            raise refusal("import of %r is not allowed; allowed imports: %s" % (name, allowed_text))
        return real_import(name, globals, locals, fromlist, level)

    def attr_refusal(name):
        if _type(name) is not _str:
            return None
        if len(name) > 4 and name[:2] == "__" and name[-2:] == "__":
            if name in safe_dunders:
                return None
            return "the attribute %r reaches interpreter internals and is not allowed" % name
        if name in denied_attrs:
            return "the attribute %r is not allowed" % name
        if not private_ok and name[:1] == "_":
            return "private attributes such as %r are not allowed" % name
        return None

    def guarded_getattr(obj, name, *default):
        why = attr_refusal(name)
        if why:
            raise refusal(why)
        return real_getattr(obj, name, *default)

    def guarded_setattr(obj, name, value):
        why = attr_refusal(name)
        if why:
            raise refusal(why)
        return real_setattr(obj, name, value)

    def guarded_delattr(obj, name):
        why = attr_refusal(name)
        if why:
            raise refusal(why)
        return real_delattr(obj, name)

    def make_refused(bname):
        def refused(*args, **kwargs):
            raise refusal("%s() is not allowed" % bname)
        refused.__name__ = bname
        refused.__qualname__ = bname
        return refused

    user_builtins = dict(builtins.__dict__)
    for bname in cfg["denied_builtins"]:
        if bname != "__import__":
            user_builtins[bname] = make_refused(bname)
    user_builtins["__import__"] = guarded_import
    user_builtins["getattr"] = guarded_getattr
    user_builtins["setattr"] = guarded_setattr
    user_builtins["delattr"] = guarded_delattr
    user_builtins["GuardViolation"] = GuardViolation
    codes = frozenset(f.__code__ for f in (guarded_import, guarded_getattr, guarded_setattr, guarded_delattr))
    return user_builtins, codes, make_refused("_posixsubprocess.fork_exec")


def _make_guard_hook(cfg, user_globals, driver_globals, workspace, wrapper_codes):
    """The audit hook. Everything it uses is bound here, at install time, before any
    user code runs: builtins, os functions and flags, the policy. Its closure is
    reachable from nowhere (CPython keeps audit hooks out of Python's reach), so the
    user's code cannot change what it sees."""
    import pathlib

    try:
        from _thread import get_ident
    except ImportError:  # a build without threads (WASI): one thread, one ident
        def get_ident():
            return 0

    # Bound now: later changes to builtins, os or these module constants do not reach
    # the hook. Paths are handled with the C functions of posix and string methods
    # only: os.path's functions look up their helpers in posixpath's globals at call
    # time, which the user's code could replace.
    _type, _str, _bytes, _int, _len, _isinstance, _any = type, str, bytes, int, len, isinstance, any
    _GuardViolation = GuardViolation
    getframe = sys._getframe
    modules = sys.modules
    module_type = type(sys)
    getcwd, lstat, readlink = os.getcwd, os.lstat, getattr(os, "readlink", None)
    fs_encoding = sys.getfilesystemencoding()
    environ_get = os.environ.get
    # The access mode is compared, not tested bit by bit: on WASI O_RDONLY is a bit
    # of its own and O_RDWR is O_RDONLY | O_WRONLY, so "any write bit" would call
    # every read a write.
    access_bits, read_only = os.O_RDONLY | os.O_WRONLY | os.O_RDWR, os.O_RDONLY
    write_flags = os.O_CREAT | os.O_TRUNC | os.O_APPEND
    path_types = (pathlib.PosixPath, pathlib.PurePosixPath, pathlib.Path, pathlib.PurePath)
    dir_entry = getattr(os, "DirEntry", None)
    plumbing_roots, import_system, never_roots = _GUARD_PLUMBING, _GUARD_IMPORT_SYSTEM, _GUARD_NEVER
    process_events, network_events, user_events = _GUARD_PROCESS_EVENTS, _GUARD_NETWORK_EVENTS, dict(_GUARD_USER_EVENTS)
    write_events, read_events = dict(_GUARD_WRITE_EVENTS), dict(_GUARD_READ_EVENTS)
    ctypes_anyone, pickle_builtins = _GUARD_CTYPES_ANYONE, _GUARD_PICKLE_BUILTINS
    driver_file = _DRIVER_FILE
    profile, exact, subtrees = cfg["profile"], cfg["exact"], cfg["subtrees"]
    allowed_text, allow_network = cfg["allowed_text"], cfg["allow_network"]
    allowed_roots = frozenset(m.split(".")[0] for m in cfg["allowed"]) | {"copyreg", "_codecs", "collections", "datetime"}
    stdlib = os.__file__.rpartition("/")[0] + "/"
    busy = set()
    roots_cache = {}

    def refusal(what):
        return _GuardViolation("airlock guard (profile '%s'): %s" % (profile, what))

    def import_ok(name):
        if name in exact or name == "__future__":
            return True
        for p in subtrees:
            if name == p or name.startswith(p + "."):
                return True
        return False

    def never(name):
        return name.partition(".")[0] in never_roots and not import_ok(name)

    # -- paths --
    def absolute(p, base=None):
        if p[:1] == "/":
            return p
        return (base if base is not None else getcwd()).rstrip("/") + "/" + p

    def norm(p):
        """POSIX normalisation of an absolute path, lexically."""
        out = []
        for c in p.split("/"):
            if c == "" or c == ".":
                continue
            if c == "..":
                if out:
                    out.pop()
                continue
            out.append(c)
        return "/" + "/".join(out)

    def real(p):
        """The absolute path with every symbolic link resolved (missing parts kept)."""
        pending = [c for c in absolute(p).split("/") if c][::-1]
        path = ""
        hops = 0
        while pending:
            c = pending.pop()
            if c == ".":
                continue
            if c == "..":
                path = path[:path.rfind("/")] if path else ""
                continue
            candidate = path + "/" + c
            try:
                mode = lstat(candidate).st_mode
            except (OSError, ValueError):
                path = candidate
                continue
            if mode & 0o170000 == 0o120000 and readlink is not None:
                hops += 1
                if hops > 40:
                    raise refusal("too many symbolic links in %r" % p)
                target = readlink(candidate)
                if target[:1] == "/":
                    path = ""
                pending.extend([x for x in target.split("/") if x][::-1])
            else:
                path = candidate
        return path or "/"

    def dirs(*paths):
        out = set()
        for p in paths:
            if p:
                for q in (norm(absolute(p)), real(p)):
                    out.add(q if q.endswith("/") else q + "/")
        return tuple(sorted(out))

    ws = real(workspace)
    write_roots = dirs(ws, environ_get("TMPDIR"), environ_get("MPLCONFIGDIR"))
    write_files = frozenset(("/dev/null",))
    system_roots = dirs(
        sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
        *[p for p in sys.path if p and real(p) != ws],
        "/usr/share", "/usr/lib", "/usr/local/share", "/usr/local/lib", "/etc/fonts", "/etc/ssl",
    )
    read_files = frozenset((
        "/dev/null", "/dev/urandom", "/dev/random", "/etc/matplotlibrc", "/etc/localtime", "/etc/timezone",
        "/etc/mime.types", "/etc/os-release", "/proc/meminfo", "/proc/cpuinfo",
    ))

    def under(p, roots):
        for r in roots:
            if p.startswith(r) or p + "/" == r:
                return True
        return False

    def path_of(p):
        """A plain str path, or None for a type the guard does not trust. Runs outside
        the hook's re-entry guard: a pathlib method the code has patched runs audited."""
        t = _type(p)
        if t is _str:
            return p
        if _isinstance(p, _str):
            return _str.__str__(p)
        if t is _bytes:
            return _bytes.decode(p, fs_encoding, "surrogateescape")
        if t in path_types or t is dir_entry:
            q = p.__fspath__()
            if _type(q) is _bytes:
                q = _bytes.decode(q, fs_encoding, "surrogateescape")
            return q if _type(q) is _str else None
        return None

    def resolve(p, dir_fd=None):
        base = None
        if p[:1] != "/" and dir_fd is not None:
            if readlink is None:
                return None
            try:
                base = readlink("/proc/self/fd/%d" % dir_fd)
            except Exception:
                return None
        n = norm(absolute(p, base))
        if under(n, system_roots) or n in read_files:
            return n  # system trees are root-owned: no symlink games there
        return real(n)

    def check_path(raw, write, what, dir_fd=None):
        if _type(raw) is _int:
            return  # an fd the code already holds
        p = path_of(raw)
        if p is None:
            raise refusal("%s: paths must be str, bytes or pathlib paths" % what)
        rp = resolve(p, dir_fd)
        if rp is None:
            raise refusal("%s %r relative to a directory descriptor is not allowed" % (what, p))
        if write:
            if rp in write_files or under(rp, write_roots):
                return
            raise refusal("%s %r is not allowed: code may write only inside the workspace %s" % (what, p, ws))
        if rp in read_files or rp in write_files or under(rp, write_roots) or under(rp, system_roots):
            return
        raise refusal(
            "%s %r is not allowed: code may read only the workspace %s and the interpreter's own files" % (what, p, ws)
        )

    # -- who is acting --
    def kind_of(filename):
        """'plumbing', 'import' or '' for a code object's file (cached). By file, not by
        the module's __name__, which the user's code could overwrite."""
        k = roots_cache.get(filename)
        if k is None:
            root = ""
            if filename[:8] == "<frozen " and filename[-1:] == ">":
                root = filename[8:-1].partition(".")[0]
            elif filename.startswith(stdlib):
                root = filename[_len(stdlib):].partition("/")[0]
                if root.endswith(".py"):
                    root = root[:-3]
            if root in import_system:
                k = "import"
            elif root in plumbing_roots or filename.endswith("/numpy/ctypeslib.py"):
                k = "plumbing"
            else:
                k = ""
            roots_cache[filename] = k
        return k

    def actor(frame, through_imports):
        while frame is not None:
            code = frame.f_code
            if code in wrapper_codes:
                frame = frame.f_back
                continue
            g = frame.f_globals
            fn = code.co_filename
            if g is user_globals or fn[:6] == "<cell-":
                return "user"
            if g is driver_globals and fn == driver_file:
                return "driver"
            k = kind_of(fn)
            if k == "import":
                if not through_imports:
                    return "import"
            elif k != "plumbing":
                return "library"
            frame = frame.f_back
        return "driver"

    def executing_module(frame):
        """The name of the module whose code the import system is running (the
        `module` argument of the loader's exec_module, up the stack)."""
        while frame is not None:
            m = frame.f_locals.get("module") if frame.f_code.co_name == "exec_module" else None
            if _type(m) is module_type:
                name = m.__dict__.get("__name__")
                return name if _type(name) is _str else None
            frame = frame.f_back
        return None

    interesting = (
        frozenset(("open", "import", "exec", "pickle.find_class"))
        | process_events | network_events | frozenset(user_events) | frozenset(write_events) | frozenset(read_events)
    )

    def hook(event, args):
        if event not in interesting and event[:7] != "ctypes.":
            return
        tid = get_ident()
        if tid in busy:
            return  # an event of the hook's own frame inspection
        busy.add(tid)
        try:
            caller = getframe(1)
        finally:
            busy.discard(tid)
        handle(event, args, caller, tid)

    def who(caller, tid, through_imports=False):
        # Frame inspection raises audit events of its own (f_code): hold them off.
        busy.add(tid)
        try:
            return actor(caller, through_imports)
        finally:
            busy.discard(tid)

    def immediate_code(caller, tid):
        busy.add(tid)
        try:
            return caller.f_code if caller is not None else None
        finally:
            busy.discard(tid)

    def module_run(caller, tid):
        busy.add(tid)
        try:
            return executing_module(caller)
        finally:
            busy.discard(tid)

    def handle(event, args, caller, tid):
        if event == "open":
            actor_ = who(caller, tid)
            if actor_ == "driver":
                return
            # open() by name is a refusing stub in the user's builtins when it is not
            # allowed. Other routes to io.open are confined by path below: C code that
            # opens files for the user's call (zoneinfo reading tzdata) looks the same
            # as the user's code calling io.open, so the event cannot refuse either.
            flags = args[2] if _len(args) > 2 else 0
            mode = args[1] if _len(args) > 1 else None
            if _type(flags) is _int and flags:
                write = (flags & access_bits) != read_only or bool(flags & write_flags)
            else:
                write = _type(mode) is _str and _any(c in mode for c in "wax+")
            if _type(args[0]) is _int and actor_ == "user":
                raise refusal("opening a file descriptor by number is not allowed")
            check_path(args[0], write, "writing" if write else "reading")
            return
        if event == "import":
            name = args[0]
            if _type(name) is _str and never(name) and who(caller, tid, True) == "user":
                raise refusal("import of %r is not allowed; allowed imports: %s" % (name, allowed_text))
            return
        if event in process_events:
            raise refusal("running or signalling programs (%s) is not allowed in this sandbox" % event)
        if event in network_events:
            if not allow_network:
                raise refusal("network access (%s) is not allowed: the sandbox's network policy is 'none'" % event)
            return
        if event == "exec":
            actor_ = who(caller, tid)
            if actor_ == "user":
                raise refusal(user_events[event])
            if actor_ == "import" and who(caller, tid, True) == "user":
                # The import system runs a module's code for the user's code:
                # importlib.import_module raises no "import" event of its own.
                name = module_run(caller, tid)
                if name is not None and never(name):
                    raise refusal("import of %r is not allowed; allowed imports: %s" % (name, allowed_text))
            return
        if event == "sys._getframe" or event == "object.__getattr__":
            if immediate_code(caller, tid) in wrapper_codes:
                return  # the guarded __import__ looking at its caller's frame
        if event in user_events:
            if who(caller, tid) == "user":
                raise refusal(user_events[event])
            return
        if event[:7] == "ctypes.":
            actor_ = who(caller, tid)
            if actor_ == "driver":
                return
            if event == "ctypes.dlopen" and args and args[0] is not None:
                raise refusal("loading native libraries with ctypes (%r) is not allowed" % (args[0],))
            if actor_ == "user" or event in ctypes_anyone:
                raise refusal("ctypes (%s) is not allowed: it calls C directly" % event)
            return
        if event == "pickle.find_class":
            module, name = _str(args[0]), _str(args[1])
            root = module.partition(".")[0]
            if root in ("builtins", "__builtin__"):
                if name in pickle_builtins:
                    return
            elif root in allowed_roots:
                return
            raise refusal("unpickling %s.%s is not allowed: pickles may only rebuild data types" % (module, name))
        if event in write_events or event in read_events:
            actor_ = who(caller, tid)
            if actor_ == "driver":
                return
            if event in ("os.symlink", "os.link") and actor_ == "user":
                raise refusal("creating links is not allowed")
            for i in write_events.get(event, ()):
                if i < _len(args):
                    dir_fd = None
                    if event in ("os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.utime"):
                        dir_fd = args[-1] if _type(args[-1]) is _int else None
                    if not (event == "sqlite3.connect" and args[i] in (":memory:", b":memory:", "")):
                        check_path(args[i], True, event, dir_fd)
            for i in read_events.get(event, ()):
                if i < _len(args) and args[i] is not None:
                    check_path(args[i], False, event)
            return

    return hook


def _install_guard(policy, user_globals, workspace, driver_globals):
    """Installs the guard's runtime layer; returns the builtins dict for the user's
    namespace."""
    cfg = _guard_settings(policy)
    user_builtins, wrapper_codes, fork_exec_stub = _make_user_builtins(cfg, user_globals)
    hook = _make_guard_hook(cfg, user_globals, driver_globals, workspace, wrapper_codes)
    # _posixsubprocess.fork_exec starts programs without an audit event of its own
    # (subprocess.Popen raises one before calling it): refuse it at the source.
    # subprocess keeps its own reference (_fork_exec); it is normally imported after
    # this point (the driver imports it only for bash cells, which cannot precede a
    # guard), so it picks up the stub.
    try:
        import _posixsubprocess

        _posixsubprocess.fork_exec = fork_exec_stub
        if "subprocess" in sys.modules:
            sys.modules["subprocess"]._fork_exec = fork_exec_stub
    except ImportError:
        pass
    # The user's code must not import from the workspace (a file there named like an
    # allowed module would shadow it).
    ws = os.path.realpath(workspace)
    sys.path[:] = [p for p in sys.path if p and os.path.realpath(p) != ws]
    sys.addaudithook(hook)
    return user_builtins



class SandboxInterrupt(KeyboardInterrupt):
    """Raised in a running cell when the host stops it (a time, CPU or output limit)."""


_STOPPED = "the cell was stopped by the sandbox (time, CPU or output limit reached)"


class Driver:
    def __init__(self, channel, workspace):
        self.ch = channel
        self.count = 0
        self.running = False
        self.sources = {}
        self.shown_figures = set()
        # The user's code runs in a fresh module that stands in as __main__, so that
        # classes and functions defined in cells pickle and introspect normally.
        self._driver_module = sys.modules.get("__main__")  # keeps the driver's globals alive
        main_module = type(sys)("__main__")
        main_module.__dict__["__builtins__"] = __builtins__
        main_module.__dict__["display"] = self.display
        sys.modules["__main__"] = main_module
        self.globals = main_module.__dict__
        self.workspace = workspace
        # The guard's runtime layer: the installed policy, a failure that makes every
        # later cell fail (fail closed), and an error for the next cell only.
        self.guard = None
        self.guard_failed = None
        self.guard_next_error = None
        try:
            import resource

            self.resource = resource
        except ImportError:  # WASI has no resource module
            self.resource = None

    # -- results --

    def display(self, *objs):
        """Show objects as rich results (like IPython's display())."""
        for obj in objs:
            if _is_figure(obj):
                self.shown_figures.add(id(obj))
            self.ch.send({"type": "result", "data": bundle(obj), "main": False})

    def _flush_figures(self):
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is None:
            return
        try:
            nums = plt.get_fignums()
        except Exception:
            return
        for num in nums:
            try:
                fig = plt.figure(num)
                if id(fig) not in self.shown_figures:
                    self.ch.send({"type": "result", "data": {"text/plain": _clip(repr(fig)), "image/png": _figure_png(fig)}, "main": False})
            except Exception as e:
                self.ch.send({"type": "result", "data": {"text/plain": "<figure %s could not be rendered: %s>" % (num, e)}, "main": False})
        try:
            plt.close("all")
        except Exception:
            pass
        self.shown_figures.clear()

    # -- errors --

    def _error(self, e):
        import linecache
        import traceback

        for name, src in self.sources.items():
            linecache.cache[name] = (len(src), None, src.splitlines(True), name)
        try:
            te = traceback.TracebackException(type(e), e, e.__traceback__, compact=True)
            _scrub(te, set())
            text = "".join(te.format())
        except Exception as fmt_err:
            text = "%s: %s\n(traceback unavailable: %s)\n" % (type(e).__name__, e, fmt_err)
        try:
            value = str(e)
        except Exception:
            value = "<unprintable %s>" % type(e).__name__
        return {
            "name": _cut(type(e).__name__, _ERROR_NAME_CHARS, False),
            "value": _cut(value, _ERROR_VALUE_CHARS, False),
            "traceback": _cut(text, _ERROR_TRACEBACK_CHARS, True),
        }

    # -- usage --

    def _cpu_ms(self):
        r = self.resource
        if r is None:
            return 0.0
        s = r.getrusage(r.RUSAGE_SELF)
        c = r.getrusage(r.RUSAGE_CHILDREN)
        return (s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime) * 1000.0

    def _peak_bytes(self):
        r = self.resource
        if r is None:
            return 0
        return max(r.getrusage(r.RUSAGE_SELF).ru_maxrss, r.getrusage(r.RUSAGE_CHILDREN).ru_maxrss) * 1024

    def _set_cpu_limit(self, used_ms, cpu_ms):
        r = self.resource
        if r is None or not cpu_ms:
            return
        try:
            soft = int((used_ms + cpu_ms) / 1000.0) + 1
            hard = r.getrlimit(r.RLIMIT_CPU)[1]
            if hard != r.RLIM_INFINITY and soft > hard:
                soft = hard
            r.setrlimit(r.RLIMIT_CPU, (soft, hard))
        except (ValueError, OSError):
            pass

    # -- cells --

    def _run_python(self, code, name):
        """Runs a cell; returns (status, exit_code). Sends the main result itself."""
        tree = compile(code, name, "exec", _ast.PyCF_ONLY_AST, dont_inherit=True)
        last = None
        if tree.body and type(tree.body[-1]) is _ast.Expr:
            last = _ast.Expression(tree.body.pop().value)
        self.running = True
        try:
            exec(compile(tree, name, "exec", dont_inherit=True), self.globals)
            value = None
            if last is not None:
                value = eval(compile(last, name, "eval", dont_inherit=True), self.globals)
        finally:
            self.running = False
        if value is not None:
            self.globals["_"] = value
            if _is_figure(value):
                self.shown_figures.add(id(value))
            self.ch.send({"type": "result", "data": bundle(value), "main": True})
        return "ok", None

    def _run_bash(self, code):
        import subprocess

        self.ch.flush_streams()
        self.running = True
        try:
            p = subprocess.Popen(["bash", "-c", code], stdin=subprocess.DEVNULL)
            try:
                rc = p.wait()
            except BaseException:
                p.kill()
                p.wait()
                raise
        finally:
            self.running = False
        if rc == 0:
            return "ok", 0
        if rc < 0:
            return "signal", -rc
        return "error", rc

    # -- the guard --

    def set_guard(self, policy):
        """Installs the guard's runtime layer (a "guard" frame). It cannot be removed
        or changed afterwards; a policy arriving after unguarded cells is refused."""
        if self.guard is not None or self.guard_failed is not None:
            if policy != self.guard and self.guard_failed is None:
                self.guard_next_error = "this sandbox's guard policy cannot change; create a new sandbox for another policy"
            return
        if self.count > 0:
            self.guard_next_error = (
                "the guard must be on from a sandbox's first cell; create a new sandbox with the guard on"
            )
            return
        try:
            user_builtins = _install_guard(policy, self.globals, self.workspace, globals())
        except Exception as e:
            self.guard_failed = "the guard could not be installed (%s: %s); this sandbox refuses to run code" % (
                type(e).__name__, e)
            return
        self.globals["__builtins__"] = user_builtins
        self.guard = policy

    def _guard_refusal(self, g):
        if self.guard_failed is not None:
            return self.guard_failed
        if self.guard_next_error is not None:
            err, self.guard_next_error = self.guard_next_error, None
            return err
        if self.guard is not None and g and any(type(k) is not str or k[:2] == "__" for k in g):
            return "global variables may not be dunder names under the guard"
        return None

    def execute(self, msg):
        self.count += 1
        self.ch.deferred_interrupt = False
        code = msg.get("code", "")
        language = msg.get("language", "python")
        name = "<cell-%d>" % self.count
        self.sources[name] = code
        g = msg.get("globals")
        refused = self._guard_refusal(g)
        if refused is not None:
            text = "airlock guard: " + refused
            self.ch.send({"type": "error", "name": "GuardViolation", "value": text, "traceback": "GuardViolation: %s\n" % text})
            self.ch.send({"type": "done", "status": "error", "execution_count": self.count, "cpu_ms": 0,
                          "peak_memory_bytes": self._peak_bytes()})
            return
        if g:
            self.globals.update(g)
        cpu0 = self._cpu_ms()
        self._set_cpu_limit(cpu0, msg.get("cpu_ms"))
        done = {"type": "done", "status": "ok", "execution_count": self.count}
        try:
            if language == "bash":
                status, code_or_sig = self._run_bash(code)
            else:
                status, code_or_sig = self._run_python(code, name)
            done["status"] = status
            if status == "signal":
                done["signal"] = code_or_sig
            elif code_or_sig is not None:
                done["exit_code"] = code_or_sig
        except SystemExit as e:
            c = e.code
            if c is None or c == 0 or c is False:
                done["exit_code"] = 0
            else:
                done["status"] = "error"
                done["exit_code"] = c if type(c) is int else 1
                if type(c) is not int:
                    print(c, file=sys.stderr)
                # Like the python command, no traceback for an explicit exit.
                self.ch.send({"type": "error", "name": "SystemExit", "value": str(c), "traceback": ""})
        except SandboxInterrupt as e:
            done["status"] = "interrupted"
            self.ch.send(dict(self._error(e), type="error"))
        except BaseException as e:
            done["status"] = "error"
            if isinstance(e, MemoryError):
                done["memory_error"] = True
            self.ch.send(dict(self._error(e), type="error"))
        try:
            self._flush_figures()
        except BaseException as e:  # e.g. an interrupt while rendering
            self.ch.send({"type": "result", "data": {"text/plain": "<figures not rendered: %s>" % type(e).__name__}, "main": False})
        for f in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                f.flush()
            except Exception:
                pass
        done["cpu_ms"] = max(0, int(self._cpu_ms() - cpu0))
        done["peak_memory_bytes"] = self._peak_bytes()
        self.ch.send(done)

    def hello(self):
        """The first frame a driver sends: who it is."""
        return {
            "type": "hello",
            "protocol": PROTOCOL,
            "python": "%d.%d.%d" % sys.version_info[:3],
            "implementation": sys.implementation.name,
            "pid": os.getpid(),
        }

    def dispatch(self, msg):
        """Handles one host frame; returns False when the host asked the driver to exit."""
        kind = msg.get("type")
        if kind == "exec":
            self.execute(msg)
        elif kind == "shutdown":
            return False
        elif kind == "guard":
            self.set_guard(msg.get("policy"))
        elif kind == "configure":
            os.environ.update(msg.get("env") or {})
            for name in msg.get("preload") or ():
                # A template's modules, imported once before a snapshot so every
                # clone has them ready; a module that fails is simply not preloaded.
                try:
                    __import__(name)
                except BaseException:
                    pass
            self.ch.send({"type": "done", "status": "ok", "execution_count": self.count})
        else:
            self.ch.send({"type": "done", "status": "error", "protocol_error": "unknown frame type %r" % (kind,)})
        return True

    def serve(self):
        self.ch.send(self.hello())
        while True:
            try:
                msg = self.ch.recv()
            except KeyboardInterrupt:
                continue  # a late interrupt that arrived while idle
            except EOFError:
                return 0
            if not self.dispatch(msg):
                return 0


# ---- the WASI transport (the wasm backend) ----
#
# Under wasmtime there is no socket and no signal. The host calls the guest's `turn`
# export once per cell with `wasi_turn()`, and the driver talks back through the
# `host::call` import (the `_host` module): each frame written is one door call, whose
# answer is b"stop" when the host wants the running cell stopped (a time or output
# limit); a door call with an empty request returns the host's next frame. A cell that
# makes no door call is interrupted like a native one: the host calls CPython's
# PyErr_SetInterruptEx(SIGINT) and _on_sigint raises SandboxInterrupt. Output uses
# the shared stream frames and writers.

class DoorChannel(Channel):
    """Frames through the WASI host's door (`_host.call`): one call per frame."""

    def __init__(self, call):
        Channel.__init__(self, None, None)
        self._call = call

    def recv(self):
        return loads(self._call(b"").decode("utf-8"))

    def _write(self, obj):
        if self._call(dumps(obj).encode("utf-8")) == b"stop" and _driver is not None and _driver.running:
            raise SandboxInterrupt(_STOPPED)


def _reseed():
    """A sandbox restored from a snapshot inherits the snapshot's random state: reseed."""
    r = sys.modules.get("random")
    if r is not None:
        r.seed()
    nr = sys.modules.get("numpy.random")
    if nr is not None:
        try:
            nr.seed()
        except Exception:
            pass


def wasi_start():
    """The first turn of a wasm sandbox: takes its settings from the host, then greets it."""
    global _driver
    import _host

    channel = DoorChannel(_host.call)
    cfg = channel.recv()
    os.environ.clear()
    os.environ.update(cfg.get("env") or {})
    workspace = cfg.get("workspace") or os.getcwd()
    os.chdir(workspace)
    sys.argv = [""]
    if workspace not in sys.path:
        sys.path.insert(0, workspace)
    _reseed()
    _driver = Driver(channel, workspace)
    writer = _make_writer_class()
    sys.stdout = writer(channel, "stdout", sys.__stdout__)
    sys.stderr = writer(channel, "stderr", sys.__stderr__)
    try:
        # The host interrupts a cell with CPython's PyErr_SetInterruptEx(SIGINT).
        import signal

        signal.signal(signal.SIGINT, _on_sigint)
    except (ImportError, AttributeError, ValueError, OSError):
        pass  # then a stopped cell is halted, not interrupted
    channel.send(_driver.hello())


def wasi_turn():
    """One turn of a wasm sandbox: runs the host's next frame."""
    _driver.dispatch(_driver.ch.recv())


def _on_sigint(signum, frame):
    if _driver is not None and _driver.running:
        ch = _driver.ch
        if ch.writer is not None and ch.writer == ch._ident():
            # This thread is in the middle of a frame: raising now would leave it half
            # written and the host could not read what follows. The frame's end raises.
            ch.deferred_interrupt = True
            return
        raise SandboxInterrupt(_STOPPED)


_driver = None


def main(argv):
    global _driver
    # The C module: `import signal` would pull in enum, functools and collections
    # (about 8 ms of start-up) for nothing.
    import _signal

    rfd = int(argv[0]) if len(argv) > 0 else 3
    wfd = int(argv[1]) if len(argv) > 1 else rfd
    for fd in {rfd, wfd}:
        os.set_inheritable(fd, False)
    workspace = os.getcwd()
    sys.argv = [""]
    if workspace not in sys.path:
        sys.path.insert(0, workspace)
    channel = Channel(rfd, wfd)
    _driver = Driver(channel, workspace)
    writer = _make_writer_class()
    sys.stdout = writer(channel, "stdout", sys.__stdout__)
    sys.stderr = writer(channel, "stderr", sys.__stderr__)
    _signal.signal(_signal.SIGINT, _on_sigint)
    return _driver.serve()


if __name__ == "__main__":
    # Started as `python -c BOOTSTRAP [DRIVER_SOURCE] FD [FD]` (see driver_args in
    # lib.rs): the channel's fds are the trailing numeric arguments.
    sys.exit(main([a for a in sys.argv[1:] if a.isdigit()]))
