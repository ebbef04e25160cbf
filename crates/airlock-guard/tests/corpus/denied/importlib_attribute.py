# importlib reached as an attribute of an allowed package (matplotlib imports it):
# import_module loads a module the guard never allows.
# rule: module-attribute
# runtime: refused
import matplotlib

matplotlib.importlib.import_module("pty")
