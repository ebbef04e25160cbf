# The same walk in an f-string, and an f-string whose escaped braces build a format
# template ({{ and }} are literal braces).
# rule: dunder-attribute, format-string
x = 1
print(f"{x.__class__.__mro__}")
print(f"{{0.__class__}}".format(x))
