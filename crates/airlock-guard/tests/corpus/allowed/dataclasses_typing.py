# Dataclasses and typing.
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Dict, Generic, List, Literal, NamedTuple, Optional, Protocol, TypedDict, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, order=True)
class Item:
    name: str
    price: float
    tags: tuple = ()


@dataclass
class Basket:
    owner: str
    items: List[Item] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self):
        self.total = sum(i.price for i in self.items)


class Pair(NamedTuple):
    left: int
    right: int


class Config(TypedDict):
    mode: Literal["fast", "slow"]
    retries: int


class Sized(Protocol):
    def __len__(self) -> int: ...


class Box(Generic[T]):
    def __init__(self, value: T) -> None:
        self.value = value

    def map(self, fn: Callable[[T], T]) -> "Box[T]":
        return Box(fn(self.value))


def longest(xs: List[Sized]) -> Optional[Sized]:
    return max(xs, key=len) if xs else None


basket = Basket("ana", [Item("tea", 3.5), Item("jam", 4.0, ("sweet",))])
cfg: Config = {"mode": "fast", "retries": 3}
prices: Dict[str, float] = {i.name: i.price for i in sorted(basket.items)}
print(asdict(basket)["total"], replace(basket.items[0], price=1.0), Pair(1, 2).right, cfg["mode"])
print(Box(2).map(lambda v: v * 10).value, longest(["a", "abc", "ab"]), prices)
