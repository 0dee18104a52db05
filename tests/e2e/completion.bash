# shellcheck shell=bash
# Drives postern's shell completions the way each shell does, for
# tests/e2e/completions.sh (the files in client/completions/) and
# tests/e2e/packages.sh (the installed ones). Source it after lib.sh.
#
# Each comp_SHELL prints, one per line and sorted, the words that shell's
# completion offers for a command line whose cursor is at its end (a
# trailing space starts a new, empty word). `postern` must be on PATH.

# comp_bash FILE LINE: the completion function that `complete -F` names,
# called with COMP_WORDS/COMP_CWORD as bash sets them; prints COMPREPLY.
comp_bash() {
    bash --norc --noprofile -c '
        source "$1" || exit 1
        fn=$(complete -p postern | sed -n "s/.* -F \([^ ]*\) .*/\1/p")
        [ -n "$fn" ] || { echo "no complete -F for postern" >&2; exit 1; }
        line=$2
        read -ra COMP_WORDS <<<"$line"
        [[ $line == *" " ]] && COMP_WORDS+=("")
        COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
        COMP_LINE=$line
        COMP_POINT=${#line}
        "$fn" postern "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
        printf "%s\n" "${COMPREPLY[@]}"' _ "$1" "$2" | sed '/^$/d' | sort
}

# comp_zsh DIR LINE: compinit loads _postern from DIR by its #compdef line;
# the function then runs with words/CURRENT as the completion system sets
# them, compadd printing what it is given and _files printing "<files>".
comp_zsh() {
    ZDOTDIR=$LAB zsh -f -c '
        fpath=("$1" $fpath)
        autoload -Uz compinit && compinit -u -d "$ZDOTDIR/zcompdump"
        fn=$_comps[postern]
        [[ -n $fn ]] || { print -u2 "compinit found no completion for postern"; exit 1 }
        compadd() { while (( $# )) && [[ $1 != -- ]]; do shift; done; shift; print -l -- "$@" }
        _files() { print -- "<files>" }
        compdef() { : }
        words=(${(z)2})
        [[ $2 == *" " ]] && words+=("")
        CURRENT=${#words}
        autoload -Uz $fn
        $fn' _ "$1" "$2" | sed '/^$/d' | sort
}

# comp_fish FILE LINE: fish's own `complete -C` after loading FILE; an
# empty FILE uses fish's default search path (the installed completions).
comp_fish() {
    HOME=$LAB fish -c '
        test -n "$argv[1]"; and source $argv[1]
        complete -C $argv[2]' "$1" "$2" | cut -f1 | sed '/^$/d' | sort
}

# offers WORDS-FILE WORD...: every WORD is among the offered words.
offers() {
    local list=$1 w
    shift
    for w in "$@"; do
        grep -qxF -- "$w" "$list" || return 1
    done
}

# completion_inventory DIR: writes DIR/postern/hosts.toml (the default
# inventory under XDG_CONFIG_HOME=DIR) and DIR/other.toml, and a key file.
completion_inventory() {
    mkdir -p "$1/postern" "$1/keys"
    cat >"$1/postern/hosts.toml" <<'TOML'
[hosts.web-17]
address = "192.0.2.17"
[hosts.web-17.actions.sshd]
key_env = "K"
[hosts.web-17.actions.console]
key_env = "K"
[hosts.web-17.actions."sshd.close"]
key_env = "K"
[hosts.db-1]
address = "192.0.2.5"
[hosts.db-1.actions.backup]
key_env = "K"
[groups]
rack-4 = ["web-17", "db-1"]
TOML
    cat >"$1/other.toml" <<'TOML'
[hosts.elsewhere]
address = "192.0.2.99"
[hosts.elsewhere.actions.door]
key_env = "K"
TOML
    : >"$1/keys/first.key"
}

# check_completions SHELL SOURCE: the shared cases for one shell. SOURCE is
# what comp_SHELL takes (a file, or zsh's directory). XDG_CONFIG_HOME must
# point at a completion_inventory directory, $INVDIR.
check_completions() {
    local sh=$1 src=$2 out=$LAB/offered
    local -a cases=(
        "postern |trigger close keygen key"
        "postern trigger --key-|--key-file --key-env"
        "postern trigger --|--passphrase --protocol --inventory --json --timeout"
        "postern trigger |web-17 db-1 @rack-4"
        "postern trigger web-17 |console sshd"
        "postern trigger @rack-4 |backup console sshd"
        "postern trigger web-17 --action |console sshd"
        "postern trigger web-17 sshd --protocol |ostiary-4"
        "postern trigger --inventory $INVDIR/other.toml |elsewhere"
        "postern trigger --inventory $INVDIR/other.toml elsewhere |door"
        "postern close |web-17 db-1 @rack-4"
        "postern close web-17 |sshd"
        "postern close web-17 --key-|--key-file --key-env"
        "postern close web-17 sshd --action |sshd.close"
        "postern key |from-passphrase derive"
        "postern key derive --|--host --action --master"
    )
    local c line want
    for c in "${cases[@]}"; do
        line=${c%%|*}
        want=${c#*|}
        "comp_$sh" "$src" "$line" >"$out" 2>&1
        # shellcheck disable=SC2086 # want is a word list
        if offers "$out" $want; then
            pass "$sh: '$line' offers $want"
        else
            fail "$sh: '$line' offers $want; got: $(tr '\n' ' ' <"$out")"
        fi
    done
    # Nothing from the inventory where an option's value is free text.
    "comp_$sh" "$src" "postern trigger web-17 sshd --timeout " >"$out" 2>&1
    if grep -qxF web-17 "$out"; then
        fail "$sh: --timeout offers host names: $(tr '\n' ' ' <"$out")"
    else
        pass "$sh: --timeout offers no host names"
    fi
    # Files after --key-file (zsh: its _files).
    "comp_$sh" "$src" "postern trigger web-17 sshd --key-file $INVDIR/keys/" >"$out" 2>&1
    if offers "$out" "$INVDIR/keys/first.key" || offers "$out" "<files>"; then
        pass "$sh: --key-file offers files"
    else
        fail "$sh: --key-file offers files; got: $(tr '\n' ' ' <"$out")"
    fi
}
