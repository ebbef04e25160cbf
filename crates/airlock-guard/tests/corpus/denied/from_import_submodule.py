# "from package import submodule" of a submodule that is not on the allow-list
# (matplotlib is, matplotlib.cbook is not): only the runtime layer can tell a
# submodule from an attribute.
# rule: runtime
# runtime: refused
from matplotlib import cbook

print(cbook)
