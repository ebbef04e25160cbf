# The static check also sees the request's global variables: the test passes one
# named __builtins__, which would replace the namespace's builtins.
# rule: global-variable
print("hello")
