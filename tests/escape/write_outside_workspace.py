# Escape: create files outside the workspace (host temp dir, /etc, the home directory, /proc/self/exe).
# Expect: nothing appears on the host and the interpreter binary is unchanged.
import os
for path in [f"/tmp/{marker}", f"/etc/{marker}", f"/root/{marker}", f"/var/tmp/{marker}", f"{host_tmp}/{marker}"]:
    try:
        with open(path, "w") as f:
            f.write("escaped")
        print("wrote", path)
    except OSError as e:
        print(path, "->", type(e).__name__)
try:
    with open("/proc/self/exe", "wb") as f:
        f.write(b"#!/bin/sh\necho pwned\n")
    print("overwrote /proc/self/exe")
except OSError as e:
    print("/proc/self/exe ->", type(e).__name__)
