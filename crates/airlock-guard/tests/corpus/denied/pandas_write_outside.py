# Nothing for the static check to see: an allowed library writes outside the
# workspace. The runtime layer confines writes to the workspace.
# rule: runtime
# runtime: stopped
import pandas as pd

pd.DataFrame({"a": [1, 2]}).to_csv(marker)
