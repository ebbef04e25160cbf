# The plainest escape of all.
# rule: dangerous-module
# runtime: stopped
import os

os.system("touch " + marker)
