# Escape: make airlock's copy-out read host files or hang: a FIFO, a link through /proc/self/root, a link to / and a link inside a directory.
# Expect: every planted output is refused; nothing from the host is returned and the copy never blocks.
import os
os.mkfifo("fifo.txt")
os.symlink("/proc/self/root/etc", "procroot")
os.symlink("/", "rootlink")
os.makedirs("d")
os.symlink("../rootlink/etc/passwd", "d/passwd")
print("planted")
