# Traceback frames: an exception's traceback leads to frames, and frames to globals.
# rule: dunder-attribute, internal-attribute
# runtime: stopped
try:
    1 / 0
except ZeroDivisionError as e:
    f = e.__traceback__.tb_frame
while "os" not in f.f_globals:
    f = f.f_back
f.f_globals["os"].system("touch " + marker)
