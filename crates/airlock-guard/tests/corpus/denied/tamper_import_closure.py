# Tampering with the guard: rewrite the closure of the guarded __import__ so that it
# allows os. The wrapper is only the first line; the audit hook keeps its own state,
# out of reach, and still refuses what os is then used for.
# rule: dunder-name, dunder-attribute
# runtime: stopped
b = __builtins__
b = b if isinstance(b, dict) else b.__dict__
imp = b["__import__"]
try:
    cells = imp.__closure__ or ()
except AttributeError:
    cells = ()  # unguarded, __import__ is the builtin, which has no closure
for cell in cells:
    if type(cell.cell_contents) is frozenset:
        cell.cell_contents = frozenset(["os"])
import os

os.system("touch " + marker)
