# globals(), locals() and vars() expose namespaces (and __builtins__ in them).
# rule: banned-name
# runtime: refused
g = globals()
print(len(g), len(vars()), len(locals()))
