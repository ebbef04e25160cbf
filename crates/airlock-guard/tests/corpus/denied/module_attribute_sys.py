# sys reached as an attribute of an allowed package, then a frame walk from
# sys._getframe to a namespace that holds os.
# rule: module-attribute, internal-attribute
# runtime: stopped
import matplotlib

f = matplotlib.sys._getframe(0)
while "os" not in f.f_globals:
    f = f.f_back
f.f_globals["os"].system("touch " + marker)
