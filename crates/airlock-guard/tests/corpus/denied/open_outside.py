# open() is not allowed unless the request allows it; outside the workspace it is
# refused at run time either way.
# rule: banned-name
# runtime: stopped
with open(marker, "w") as f:
    f.write("escaped")
