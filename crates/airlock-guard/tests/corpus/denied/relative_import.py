# Relative imports would load files from the workspace.
# rule: import
from . import helpers
