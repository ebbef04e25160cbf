# A library helper that runs a source string: numpy.testing.measure compiles its
# argument and runs it in the caller's namespace. Nothing for the static check to see
# (the string is just a string); the code it runs is still the user's code at run time.
# rule: runtime
# runtime: stopped
import numpy as np

np.testing.measure("import os; os.system('touch ' + marker)")
