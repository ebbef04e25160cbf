# Unicode compatibility characters: CPython applies NFKC to identifiers, so this name
# (U+FF45 FULLWIDTH LATIN SMALL LETTER E, then "val") is eval.
# rule: banned-name
# runtime: stopped
ｅval("open(marker, 'w').close()")
