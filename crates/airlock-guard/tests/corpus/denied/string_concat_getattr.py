# A dunder name assembled from pieces, read with getattr.
# rule: dynamic-attribute, dunder-string
owner = getattr(print, "__sel" + "f__")
cls = getattr((), "_" * 2 + "class" + "_" * 2)
