# AttributeError.obj (Python 3.10+) hands back the object whose attribute lookup
# failed; here a library function, whose globals hold the real builtins.
# rule: dunder-attribute, dunder-string
# runtime: stopped
import json

try:
    json.loads.no_such_attribute
except AttributeError as e:
    fn = e.obj
real_builtins = fn.__globals__["__builtins__"]
real_builtins["exec"]("open(marker, 'w').close()", {"marker": marker})
