# String formatting that reads only ordinary attributes and items.
import string
import textwrap


class P:
    def __init__(self, x, y):
        self.x, self.y = x, y


p = P(1.5, -2)
print("{0.real} {0.imag}".format(3 + 4j), "{p.x:>6.2f}|{p.y:+d}".format(p=p))
print("{name!r} has {n:,} rows".format(name="table", n=1234567), "%s=%0.2f" % ("pi", 3.14159))
print(f"{p.x:.1f} {p.y!r} {'nested'} {[1, 2][0]}")
print(string.Template("$who likes $what").substitute(who="ana", what="tea"))
print(textwrap.fill("word " * 20, width=30))
print("{0[1]} {1[key]}".format([1, 2], {"key": "value"}))
