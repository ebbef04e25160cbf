# __builtins__ tricks: the namespace's builtins hold exec whatever the code may name.
# rule: dunder-name
# runtime: stopped
b = __builtins__
b = b if isinstance(b, dict) else b.__dict__
b["exec"]("open(marker, 'w').close()")
