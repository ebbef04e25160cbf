# Escape: burn every core forever, from background processes that outlive the cell.
# Expect: status timeout at the wall-clock limit; no process survives the sandbox.
import os, threading
for _ in range(4):
    try:
        pid = os.fork()
    except (AttributeError, OSError):
        break  # no processes here (wasm): the threads and the loop below still run
    if pid == 0:
        os.execvp("sh", ["sh", "-c", f"while :; do :; done # {marker_seconds}"])
def spin():
    while True:
        pass
for _ in range(4):
    try:
        threading.Thread(target=spin, daemon=True).start()
    except RuntimeError:
        break  # no threads here (wasm)
spin()
