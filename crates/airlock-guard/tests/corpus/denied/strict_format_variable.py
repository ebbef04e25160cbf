# Under strict, .format() only on literals: a template in a variable could have been
# assembled at run time.
# profile: strict
# rule: format-call
template = "{0}"
print(template.format(1))
