# Tidies scdoc's output for mandoc -Tlint, which reports the paragraph
# macros scdoc emits where they do nothing ("skipping paragraph macro"):
# a .P right after .SH/.SS/.RS/.P or right before .SH/.SS is dropped, and
# a .P just before .RE moves after it, so entries keep their blank line.
# man -l renders the same text with and without it.
/^\.P$/ {
    if (held || last ~ /^\.(SH|SS|RS|P)( |$)/) { next }
    held = 1; next
}
/^\.RE( |$)/ && held { print; last = $0; next }
/^\.(SH|SS)( |$)/ { held = 0 }
{ if (held) { print ".P"; held = 0 } print; last = $0 }
