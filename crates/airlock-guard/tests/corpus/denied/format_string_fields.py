# Format-string field access: str.format and format_map read attributes of their
# arguments, so a template can walk to interpreter internals without any dunder in
# the code itself.
# rule: format-string, dunder-string
def f():
    pass

print("{0.__class__.__mro__}".format(()))
print("{fn.__globals__[marker]}".format_map({"fn": f}))
