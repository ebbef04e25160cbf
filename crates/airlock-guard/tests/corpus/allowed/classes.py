# Classes: inheritance with super().__init__, operators, properties, iterators,
# context managers, abstract base classes and enums.
import abc
import enum


class Shape(abc.ABC):
    def __init__(self, name):
        self.name = name

    @abc.abstractmethod
    def area(self):
        ...

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r}, area={self.area():.2f})"


class Rect(Shape):
    def __init__(self, w, h):
        super().__init__("rect")
        self.w, self.h = w, h

    def area(self):
        return self.w * self.h

    def __add__(self, other):
        return Rect(self.w + other.w, self.h + other.h)

    def __eq__(self, other):
        return isinstance(other, Rect) and (self.w, self.h) == (other.w, other.h)

    __hash__ = None

    @property
    def ratio(self):
        return self.w / self.h

    @classmethod
    def square(cls, s):
        return cls(s, s)


class Countdown:
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return self

    def __next__(self):
        if self.n <= 0:
            raise StopIteration
        self.n -= 1
        return self.n


class Timer:
    def __enter__(self):
        self.entered = True
        return self

    def __exit__(self, *exc):
        return False


class Color(enum.Enum):
    RED = 1
    GREEN = 2


with Timer() as t:
    shapes = [Rect(2, 3), Rect.square(2) + Rect(1, 1)]
print(shapes, list(Countdown(3)), Color.RED.name, t.entered, shapes[0].ratio, Rect(1, 2) == Rect(1, 2))
print(Rect.__name__, Rect.__doc__, Rect.__module__, Shape.area.__qualname__)
