# Python 3.12 syntax: type parameters, type aliases, nested quotes in f-strings.
# python: 3.12
type Pair[T] = tuple[T, T]


def first[T](xs: list[T]) -> T:
    return xs[0]


class Stack[T]:
    def __init__(self) -> None:
        self.items: list[T] = []


d = {"k": "v"}
print(first([3, 1]), f"{d["k"]}", Stack[int]().items)
