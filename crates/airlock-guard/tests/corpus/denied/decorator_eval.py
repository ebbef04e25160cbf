# A decorator hides a call: the class statement passes the class to str.format (which
# returns the template unchanged), and eval() runs the result.
# rule: banned-name
# runtime: stopped
@eval
@"open(marker, 'w').close()".format
class _:
    pass
