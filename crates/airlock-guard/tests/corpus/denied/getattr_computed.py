# CVE-2025-5120 (smolagents): getattr with a computed name reaches a module the
# allow-list refuses (subprocess) through an allowed one (matplotlib imports it).
# rule: dynamic-attribute
# runtime: stopped
import matplotlib

name = "sub" + "process"
sp = getattr(matplotlib, name)
sp.run(["touch", marker])
