# Homoglyphs in attribute names: U+1D484 (script c) and U+1D483 (script b) normalise
# to c and b, so these are __class__ and __base__.
# rule: dunder-attribute
# runtime: stopped
for cls in ().__𝒄lass__.__𝒃ase__.__subclasses__():
    if cls.__name__ == "_wrap_close":
        cls.__init__.__globals__["system"]("touch " + marker)
