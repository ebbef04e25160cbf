# An allowed library opens a connection (pandas fetches URLs with urllib).
# rule: runtime
# runtime: network
import pandas as pd

pd.read_csv(f"http://127.0.0.1:{port}/data.csv")
