# CVE-2026-4963 (smolagents, an incomplete fix of CVE-2025-9959): dunder access hidden
# in an augmented assignment's target and in a with statement's __enter__.
# rule: dunder-attribute
# runtime: stopped
class Box:
    pass


box = Box()
box.__dict__ |= {"cls": ().__class__}


class Enter:
    def __enter__(self):
        for c in box.cls.__base__.__subclasses__():
            if c.__name__ == "_wrap_close":
                c.__init__.__globals__["system"]("touch " + marker)
        return self

    def __exit__(self, *exc):
        return False


with Enter():
    pass
