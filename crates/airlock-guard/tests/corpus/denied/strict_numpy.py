# Under strict, third-party packages are not allowed.
# profile: strict
# rule: import
import numpy as np

print(np.arange(3))
