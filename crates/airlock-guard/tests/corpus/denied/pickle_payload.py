# pickle.loads runs code: this payload calls os.system.
# rule: dangerous-module
# runtime: stopped
import pickle

pickle.loads(b"cos\nsystem\n(V" + ("touch " + marker).encode() + b"\ntR.")
