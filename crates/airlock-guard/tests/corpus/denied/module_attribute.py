# An allowed package's own imports are attributes: matplotlib.subprocess is the
# subprocess module.
# rule: module-attribute
# runtime: stopped
import matplotlib

matplotlib.subprocess.run(["touch", marker])
