# A class pattern's keyword reads an attribute: this matches on __class__.
# rule: dunder-attribute
match ():
    case object(__class__=cls):
        print(cls)
