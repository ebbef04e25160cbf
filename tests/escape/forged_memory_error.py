# Escape: claim the sandbox ran out of memory without using any (`raise MemoryError`), so that a caller believes airlock's memory limit stopped the code.
# Expect: where the host measures memory (jail's cgroup, wasm's linear memory) the claim is an ordinary error, not memory_limit.
raise MemoryError("forged: nothing was allocated")
