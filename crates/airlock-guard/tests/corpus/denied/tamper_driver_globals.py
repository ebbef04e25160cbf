# Tampering with the guard: empty the driver's tables of refused events (reached
# through display(), a driver method in the namespace). The hook bound its own copies
# when it was installed.
# rule: dunder-attribute
# runtime: stopped
g = display.__func__.__globals__
for k in list(g):
    if k.startswith("_GUARD_"):
        g[k] = frozenset() if isinstance(g[k], frozenset) else {}
import matplotlib

matplotlib.subprocess.run(["touch", marker])
