# The same payload through an allowed package: pandas.read_pickle unpickles.
# rule: dangerous-call
# runtime: stopped
import io

import pandas as pd

payload = b"cos\nsystem\n(V" + ("touch " + marker).encode() + b"\ntR."
pd.read_pickle(io.BytesIO(payload))
