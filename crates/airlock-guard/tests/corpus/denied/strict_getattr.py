# Under strict, getattr is not allowed at all.
# profile: strict
# rule: dynamic-attribute
x = 3
print(getattr(x, "real"))
