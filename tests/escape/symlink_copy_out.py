# Escape: make airlock copy a host file out of the sandbox by planting symlinks where outputs are expected.
# Expect: the copy-out refuses the links; no host content is returned.
import os
os.symlink("/etc/shadow", "out.txt")
os.makedirs("d", exist_ok=True)
os.symlink("/etc", "d/etc")
print("planted")
