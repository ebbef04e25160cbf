# Comprehension-heavy code with the standard library's functional tools.
import itertools
from collections import Counter, defaultdict, deque, namedtuple
from functools import lru_cache, partial, reduce
from operator import itemgetter, mul

words = "the quick brown fox jumps over the lazy dog the end".split()
counts = Counter(words)
by_len = defaultdict(list)
for w in words:
    by_len[len(w)].append(w)
pairs = [(a, b) for a in range(4) for b in range(a) if (a + b) % 2]
squares = {n: n * n for n in range(10) if n % 3}
letters = {c for w in words for c in w}
firsts = sorted(((w[0], w) for w in set(words)), key=itemgetter(1))
groups = {k: list(g) for k, g in itertools.groupby(sorted(words, key=len), key=len)}
product = reduce(mul, range(1, 8))
window = deque(maxlen=3)
for n in range(10):
    window.append(n)
Point = namedtuple("Point", "x y")
pts = [Point(x, y) for x, y in itertools.product(range(3), repeat=2)]


@lru_cache(maxsize=None)
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


add3 = partial(lambda a, b: a + b, 3)
if (n := len(pts)) > 5:
    print(n, counts.most_common(2), product, list(window), fib(30), add3(4), len(letters), len(groups))
