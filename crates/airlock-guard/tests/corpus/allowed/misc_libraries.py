# More of what analysis code touches: time zones (read from the system's tzdata), CSV
# and JSON round trips through files in the workspace, hashing, UUIDs, 3-D and date
# plots, pandas plotting (which imports matplotlib itself).
import csv
import hashlib
import io
import json
import random
import time
import uuid
from datetime import datetime
from zoneinfo import ZoneInfo

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from mpl_toolkits.mplot3d import Axes3D  # noqa: F401

random.seed(1)
time.sleep(0.001)
oslo = datetime(2024, 6, 1, 12, tzinfo=ZoneInfo("Europe/Oslo"))
rows = list(csv.reader(io.StringIO("a,b\n1,2\n3,4\n")))
digest = hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:12]
token = uuid.uuid4().hex
df = pd.DataFrame(
    {"when": pd.date_range("2024-01-01", periods=48, freq="h"), "value": np.random.default_rng(3).normal(size=48)}
)
daily = df.set_index("when").resample("D").mean()
df.to_json("frame.json", orient="records", date_format="iso")
back = pd.read_json("frame.json")
np.savetxt("values.txt", df["value"].to_numpy())
loaded = np.loadtxt("values.txt")
ax = df.plot(x="when", y="value")
ax.xaxis.set_major_formatter(mdates.DateFormatter("%d %H"))
fig = plt.figure()
fig.add_subplot(projection="3d").plot([0, 1], [0, 1], [0, 1])
plt.savefig("surface.svg")
print(oslo.utcoffset(), rows, digest, len(token), daily.shape, len(back), loaded.shape)
daily
