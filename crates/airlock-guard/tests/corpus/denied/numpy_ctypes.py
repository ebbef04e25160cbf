# smolagents issue #2094 (a ctypes escape), reached through numpy: numpy.ctypeslib
# imports ctypes, and ctypes calls libc's system().
# rule: module-attribute
# runtime: stopped
import numpy as np

libc = np.ctypeslib.ctypes.CDLL(None)
libc.system(("touch " + marker).encode())
