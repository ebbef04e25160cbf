# rule: dangerous-module
# runtime: stopped
from subprocess import run

run(["touch", marker])
