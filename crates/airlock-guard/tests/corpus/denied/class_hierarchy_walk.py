# CVE-2025-9959 (smolagents): walk the class hierarchy from a tuple to a class whose
# methods' globals hold os.system, then run a command.
# rule: dunder-attribute
# runtime: stopped
for cls in ().__class__.__mro__[1].__subclasses__():
    if cls.__name__ == "_wrap_close":
        cls.__init__.__globals__["system"]("touch " + marker)
