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
# with a "type"). Host -> guest: exec, shutdown, configure. Guest -> host: hello, result,
# error, done. See crates/airlock-guest/src/protocol.rs for the full schema.
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
        try:
            import _thread

            self._lock = _thread.allocate_lock()
        except ImportError:  # a build without threads
            self._lock = None

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
        while view:
            n = os.write(self.wfd, view)
            view = view[n:]

    def _flush_locked(self):
        if self._pending:
            text = "".join(self._pending)
            self._pending = []
            self._pending_len = 0
            self._write({"type": "stream", "name": self._pending_name, "text": text})

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


class SandboxInterrupt(KeyboardInterrupt):
    """Raised in a running cell when the host stops it (a time, CPU or output limit)."""


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
        return {"name": type(e).__name__, "value": value, "traceback": text}

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

    def execute(self, msg):
        self.count += 1
        code = msg.get("code", "")
        language = msg.get("language", "python")
        name = "<cell-%d>" % self.count
        self.sources[name] = code
        g = msg.get("globals")
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
            raise SandboxInterrupt("the cell was stopped by the sandbox (time, CPU or output limit reached)")


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
        raise SandboxInterrupt("the cell was stopped by the sandbox (time, CPU or output limit reached)")


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
