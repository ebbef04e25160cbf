# exec without the name exec: compile() under an alias, then the function type
# (type(lambda: None)) turns the code object into a callable.
# rule: banned-name
# runtime: stopped
c = compile
code = c("open(marker, 'w').close()", "<payload>", "exec")
type(lambda: None)(code, {"marker": marker, "open": print.__self__.open})()
