# An allowed library reads a host file outside the workspace and the interpreter's
# directories.
# rule: runtime
# runtime: refused
import pandas as pd

print(pd.read_csv("/etc/passwd", sep=":", header=None).head())
