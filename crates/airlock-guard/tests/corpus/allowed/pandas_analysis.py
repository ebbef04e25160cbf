# A typical data-analysis cell: build, clean, group, join, pivot, save, read back.
import io

import numpy as np
import pandas as pd

csv = io.StringIO("city,month,sales\nOslo,1,10\nOslo,2,12\nLima,1,7\nLima,2,9\nLima,3,\n")
df = pd.read_csv(csv)
df["sales"] = df["sales"].fillna(df["sales"].mean())
summary = df.groupby("city")["sales"].agg(["mean", "sum", "count"]).reset_index()
regions = pd.DataFrame({"city": ["Oslo", "Lima"], "region": ["EU", "SA"]})
joined = summary.merge(regions, on="city", how="left")
pivot = df.pivot_table(index="city", columns="month", values="sales", aggfunc="sum")
df["z"] = (df["sales"] - df["sales"].mean()) / df["sales"].std()
df.to_csv("clean.csv", index=False)
again = pd.read_csv("clean.csv")
assert len(again) == len(df)
print(joined.to_string(index=False))
print(pivot.shape, round(float(np.nanmax(pivot.to_numpy())), 2))
df.describe()
