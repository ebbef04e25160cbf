# Escape: forge airlock's verdict by writing a raw `exited` frame to the driver's channel (or the wasm door), claiming the interpreter was OOM-killed; only an agent inside a virtual machine may send that frame.
# Expect: the forged frame is a protocol violation (status killed), never memory_limit; on microvm the agent refuses to relay it and reports the driver's real end.
import json, os, time
frame = json.dumps({"type": "exited", "code": None, "signal": 9, "oom_kill": True}).encode()
try:
    import _host  # wasm: the driver's door
    _host.call(frame)
except ImportError:
    os.write(3, len(frame).to_bytes(4, "big") + frame)
time.sleep(10)
print("not stopped")
