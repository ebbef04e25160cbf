# A lambda hides the call to exec behind an ordinary-looking name.
# rule: banned-name
# runtime: stopped
run = (lambda f: lambda src: f(src))(exec)
run("open(marker, 'w').close()")
