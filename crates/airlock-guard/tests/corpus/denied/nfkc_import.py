# U+1D48A MATHEMATICAL BOLD SCRIPT SMALL I: after NFKC this is __import__.
# rule: banned-name
# runtime: stopped
__𝒊mport__("os").system("touch " + marker)
