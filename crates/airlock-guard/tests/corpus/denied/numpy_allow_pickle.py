# numpy.load with allow_pickle=True unpickles anything that is not an .npy file.
# rule: dangerous-call
# runtime: stopped
import io

import numpy as np

payload = b"cos\nsystem\n(V" + ("touch " + marker).encode() + b"\ntR."
np.load(io.BytesIO(payload), allow_pickle=True)
