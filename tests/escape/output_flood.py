# Escape: flood airlock with output written below Python (os.write) and by a child process, to grow the host's memory without bound.
# Expect: status output_limit; airlock keeps at most limits.output_bytes; the writers do not outlive the sandbox.
import os, subprocess
try:
    subprocess.Popen(["sh", "-c", f"while :; do echo flood {marker_seconds}; done"])
except OSError:
    pass  # no processes here (wasm): the os.write flood below still runs
chunk = b"y" * 65536
while True:
    os.write(1, chunk)
