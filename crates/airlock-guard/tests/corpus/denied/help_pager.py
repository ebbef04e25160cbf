# help() and license() start a pager (a program, and a prompt that runs commands).
# rule: banned-name
# runtime: refused
help(len)
license()
