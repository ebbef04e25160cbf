# getattr/setattr/hasattr with literal names, __name__ checks, and other dunders that
# are fine to use.
import math


class Settings:
    pass


s = Settings()
setattr(s, "level", 3)
fn = getattr(math, "sqrt")
name = "level"
if hasattr(s, name) and getattr(s, "level", 0) > 1:
    print(fn(16), s.level, math.__name__, type(s).__name__, Settings.__doc__)
__all__ = ["Settings"]
if __name__ == "__main__":
    print("main")
