# breakpoint() starts a debugger: an interactive way to run anything.
# rule: banned-name
# runtime: refused
breakpoint()
