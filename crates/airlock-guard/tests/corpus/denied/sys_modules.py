# sys.modules holds every loaded module, os among them.
# rule: dangerous-module
# runtime: stopped
import sys

sys.modules["os"].system("touch " + marker)
