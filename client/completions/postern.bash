# bash completion for postern(1): subcommands, options, --protocol values,
# and the host names, @groups and actions of the inventory (hosts.toml, or
# the --inventory given on the line). The words come from
# `postern complete`, so they follow the installed client.

_postern_words() {
    command postern complete "$@" 2>/dev/null
}

_postern() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD - 1]}
    local cmd opts meta w i skip=0 npos=0 target="" inv=()
    COMPREPLY=()
    if [ "$COMP_CWORD" -le 1 ]; then
        mapfile -t COMPREPLY < <(compgen -W "$(_postern_words commands) --help --version" -- "$cur")
        return 0
    fi
    cmd=${COMP_WORDS[1]}
    [ "$cmd" = key ] && [ "$COMP_CWORD" -eq 2 ] && {
        mapfile -t COMPREPLY < <(compgen -W "from-passphrase derive" -- "$cur")
        return 0
    }
    opts=$(_postern_words options "$cmd")
    [ -n "$opts" ] || return 0

    # Positionals so far (the target is the first), and --inventory.
    for ((i = 2; i < COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        if [ "$skip" = 1 ]; then
            skip=0
            continue
        fi
        case $w in
            --inventory) inv=(--inventory "${COMP_WORDS[i + 1]}") ;;
            --inventory=*) inv=("$w") ;;
        esac
        case $w in
            --*=*) ;;
            -*) awk -v o="$w" '$1 == o && NF > 1 { f = 1 } END { exit !f }' <<<"$opts" && skip=1 ;;
            *)
                [ "$npos" -eq 0 ] && target=$w
                npos=$((npos + 1))
                ;;
        esac
    done

    # The value of the option before the cursor.
    meta=$(awk -v o="$prev" '$1 == o { print $2 }' <<<"$opts")
    case $prev in
        --protocol)
            mapfile -t COMPREPLY < <(compgen -W "$(_postern_words protocols)" -- "$cur")
            return 0
            ;;
        --action)
            { [ "$cmd" = trigger ] || [ "$cmd" = close ]; } && [ -n "$target" ] &&
                mapfile -t COMPREPLY < <(compgen -W "$(_postern_words actions "$target" "${inv[@]}")" -- "$cur")
            return 0
            ;;
    esac
    case $meta in
        FILE)
            mapfile -t COMPREPLY < <(compgen -f -- "$cur")
            return 0
            ;;
        VAR)
            mapfile -t COMPREPLY < <(compgen -e -- "$cur")
            return 0
            ;;
        ?*) return 0 ;;
    esac

    if [[ $cur == -* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$(awk '{ print $1 }' <<<"$opts")" -- "$cur")
    elif { [ "$cmd" = trigger ] || [ "$cmd" = close ]; } && [ "$npos" -eq 0 ]; then
        mapfile -t COMPREPLY < <(compgen -W "$(_postern_words hosts "${inv[@]}")" -- "$cur")
    elif [ "$cmd" = trigger ] && [ "$npos" -eq 1 ]; then
        mapfile -t COMPREPLY < <(compgen -W "$(_postern_words actions "$target" "${inv[@]}")" -- "$cur")
    elif [ "$cmd" = close ] && [ "$npos" -eq 1 ]; then
        mapfile -t COMPREPLY < <(compgen -W "$(_postern_words gates "$target" "${inv[@]}")" -- "$cur")
    fi
    return 0
}

complete -F _postern postern
