# __import__ by another name: importlib.import_module.
# rule: dangerous-module
# runtime: stopped
import importlib

importlib.import_module("os").system("touch " + marker)
