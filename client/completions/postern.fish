# fish completion for postern(1): subcommands, options, --protocol values,
# and the host names, @groups and actions of the inventory (hosts.toml, or
# the --inventory given on the line). The words come from
# `postern complete`, so they follow the installed client.

function __postern_complete
    set -l tokens (commandline -opc)
    set -l cur (commandline -ct)
    set -l n (count $tokens)
    if test $n -le 1
        command postern complete commands 2>/dev/null
        printf '%s\n' --help --version
        return
    end
    set -l cmd $tokens[2]
    if test $cmd = key; and test $n -eq 2
        printf '%s\n' from-passphrase derive
        return
    end
    set -l opts (command postern complete options $cmd 2>/dev/null)
    test (count $opts) -gt 0; or return

    set -l inv
    set -l target
    set -l npos 0
    set -l skip 0
    set -l i 3
    while test $i -le $n
        set -l w $tokens[$i]
        if test $skip -eq 1
            set skip 0
        else
            switch $w
                case --inventory
                    set -l j (math $i + 1)
                    test $j -le $n; and set inv --inventory $tokens[$j]
                case '--inventory=*'
                    set inv $w
            end
            switch $w
                case '--*=*'
                case '-*'
                    for o in $opts
                        if string match -q -- "$w *" $o
                            set skip 1
                        end
                    end
                case '*'
                    test $npos -eq 0; and set target $w
                    set npos (math $npos + 1)
            end
        end
        set i (math $i + 1)
    end

    set -l prev $tokens[-1]
    set -l meta
    for o in $opts
        if string match -q -- "$prev *" $o
            set meta (string split -f2 ' ' -- $o)
        end
    end
    switch $prev
        case --protocol
            command postern complete protocols 2>/dev/null
            return
        case --action
            if contains -- $cmd trigger close; and test -n "$target"
                command postern complete actions $target $inv 2>/dev/null
            end
            return
    end
    switch "$meta"
        case FILE
            __fish_complete_path $cur
            return
        case VAR
            set -n -x
            return
        case '?*'
            return
    end

    if string match -q -- '-*' $cur
        for o in $opts
            string split -f1 ' ' -- $o
        end
    else if contains -- $cmd trigger close; and test $npos -eq 0
        command postern complete hosts $inv 2>/dev/null
    else if test $cmd = trigger; and test $npos -eq 1
        command postern complete actions $target $inv 2>/dev/null
    else if test $cmd = close; and test $npos -eq 1
        command postern complete gates $target $inv 2>/dev/null
    end
end

complete -c postern -f -a '(__postern_complete)'
