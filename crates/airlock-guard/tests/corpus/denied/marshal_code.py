# marshal loads code objects.
# rule: dangerous-module
# runtime: refused
import marshal

code = marshal.loads(bytes.fromhex("e3"))
