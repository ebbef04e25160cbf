# Tampering with the guard: make os report every write as a read and every path as
# the workspace, then write outside it. The hook bound os's functions and flags when
# it was installed.
# rule: module-attribute
# runtime: stopped
import matplotlib
import pandas as pd

os = matplotlib.os
for flag in ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND"):
    setattr(os, flag, 0)
os.path.realpath = lambda p, **kw: os.getcwd()
os.path.normpath = lambda p: os.getcwd()
pd.DataFrame({"a": [1]}).to_csv(marker)
