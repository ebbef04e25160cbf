# Escape: fill the host's disk through the workspace.
# Expect: writing stops at the sandbox's file/workspace limit with an error or SIGXFSZ.
chunk = b"x" * (1 << 20)
written = 0
with open("fill.bin", "wb") as f:
    while written < (4 << 30):
        f.write(chunk)
        f.flush()
        written += len(chunk)
print("wrote", written)
