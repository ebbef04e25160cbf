# Escape: grow airlock's memory with rich results: raw `result` frames of 32 MiB written straight to the driver's channel (or the wasm door), then display() of large values.
# Expect: status output_limit with results_truncated; airlock keeps at most limits.result_bytes of results and skips frames too long for what is left unread.
import os
blob = ('{"type":"result","data":{"text/plain":"' + "B" * (32 << 20) + '"},"main":false}').encode()
try:
    import _host  # wasm: the driver's door
    send = _host.call
except ImportError:
    def send(b):
        os.write(3, len(b).to_bytes(4, "big") + b)
for i in range(8):
    send(blob)
for i in range(100):
    display("A" * 1_000_000)
