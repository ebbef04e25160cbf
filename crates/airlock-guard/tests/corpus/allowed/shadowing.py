# Functions of allowed modules that share a name with a refused builtin.
from re import compile

import pandas as pd
from pandas import eval

pattern = compile(r"(\d+)-(\d+)")
print(pattern.match("12-34").groups())
df = pd.DataFrame({"a": [1, 2, 3], "b": [4, 5, 6]})
print(eval("df.a + df.b").tolist(), df.query("a > 1").shape, df.eval("c = a * b").c.sum())
