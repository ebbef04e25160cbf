# Generator frames: from inside a running generator, walk up the frames to one whose
# globals hold the os module, and use it.
# rule: internal-attribute
# runtime: stopped
def probe():
    f = gen.gi_frame
    while f is not None and "os" not in f.f_globals:
        f = f.f_back
    yield f.f_globals


gen = probe()
found = next(gen)
found["os"].system("touch " + marker)
