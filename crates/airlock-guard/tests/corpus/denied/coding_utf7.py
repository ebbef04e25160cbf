# -*- coding: utf-7 -*-
# Encoding tricks: in UTF-7 "+AAo-" is a newline, so read as UTF-7 the next line runs a
# statement that UTF-8 shows as a comment. Airlock hands code to the interpreter as
# text, which ignores the declaration; the guard refuses the declaration anyway.
# rule: encoding
# runtime: inert
x = 1  # +AAo-open(marker, 'w').close()
