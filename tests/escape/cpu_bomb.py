# Escape: burn every core forever, from background processes that outlive the cell.
# Expect: status timeout at the wall-clock limit; no process survives the sandbox.
import os, threading
for _ in range(4):
    if os.fork() == 0:
        os.execvp("sh", ["sh", "-c", f"while :; do :; done # {marker_seconds}"])
def spin():
    while True:
        pass
for _ in range(4):
    threading.Thread(target=spin, daemon=True).start()
spin()
