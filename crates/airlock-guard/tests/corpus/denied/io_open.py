# open() by another name: io.open is the same function.
# rule: banned-name
# runtime: stopped
from io import open

with open(marker, "w") as f:
    f.write("escaped")
