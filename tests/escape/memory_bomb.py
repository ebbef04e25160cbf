# Escape: take all of the host's memory.
# Expect: the sandbox is stopped at its memory limit (status memory_limit).
blocks = []
while True:
    blocks.append(bytearray(32 << 20))
