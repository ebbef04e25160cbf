# A submodule is not allowed just because its parent is.
# rule: import
# runtime: refused
import matplotlib.cbook
