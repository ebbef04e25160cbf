# _posixsubprocess.fork_exec starts a program without raising an audit event of its
# own (subprocess.Popen raises one before calling it); subprocess keeps it as
# _fork_exec, and matplotlib imports subprocess. The argument list is CPython
# 3.11/3.12's.
# rule: module-attribute
# runtime: stopped
import matplotlib

sp = matplotlib.subprocess
r, w = sp.os.pipe()
touch = b"/usr/bin/touch"
pid = sp._fork_exec(
    [touch, marker.encode()], [touch], True, (), None, None,
    -1, -1, -1, -1, -1, -1, r, w, True, False, -1, None, None, None, -1, None, False,
)
sp.os.waitpid(pid, 0)
