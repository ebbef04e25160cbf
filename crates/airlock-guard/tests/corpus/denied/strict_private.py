# Under strict, private attributes are not allowed.
# profile: strict
# rule: private-attribute
import collections

print(collections._sys)
