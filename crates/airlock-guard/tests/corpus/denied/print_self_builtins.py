# A builtin function's __self__ is the builtins module.
# rule: dunder-attribute
# runtime: stopped
print.__self__.exec("open(marker, 'w').close()")
