#!/bin/sh
# postern.sh: reference postern-2 / ostiary-4 client in POSIX sh.
#
# Needs only a POSIX shell (dash, bash, busybox ash), openssl 1.1.1 or
# later, and od/dd/tr/mkfifo/mktemp/ls from coreutils or busybox. The TCP
# transport is bash's /dev/tcp when run by bash, else socat, else nc
# (OpenBSD, traditional or busybox). Set POSTERN_TRANSPORT=devtcp|socat|nc
# to choose.
#
# No secret is ever placed on the command line of a program this script
# runs (command lines are world-readable in /proc). HMAC-SHA256 is
# computed here as H((K^opad) || H((K^ipad) || m)): the XOR is shell
# arithmetic, the padded key blocks are written by the printf builtin
# (which does not exec) into a pipe to `openssl dgst -sha256 -binary`.
# Passphrases reach openssl on standard input (`-pass stdin`). Secrets
# are held in shell variables and pipes only, never in files; the
# temporary directory (mode 0700) holds two FIFOs and public bytes.
#
# The specification is PROTOCOL.md; `postern.sh help` lists the options
# and exit codes.

# Formats built from \ooo escapes are the point of esc_of_hex (SC2059);
# the v_* variables of the self-test are set by eval (SC2154).
# shellcheck disable=SC2059,SC2154

set -u
umask 077
LC_ALL=C
export LC_ALL

PROG=postern.sh
DEFAULT_PORT=7001
DEFAULT_TIMEOUT=30
# The server sends the ack within 300 s of the reply (wire::ACK_DEADLINE_SECS):
# a gate's run may take that long.
DEFAULT_ACK_TIMEOUT=300
PBKDF2_ITERATIONS=600000

# Exit codes (PROTOCOL.md, "Client exit codes").
EX_OK=0
EX_LOCAL=1
EX_NOACK=2
EX_NET=3
EX_REFUSED=4
EX_FAILED=5
EX_USAGE=64

usage() {
    cat <<EOF
usage:
  $PROG trigger HOST[:PORT] [ACTION] [options]
  $PROG close HOST[:PORT] GATE [options]
                                 close gate GATE now with the key of its closing
                                 action, GATE.close (or --action NAME)
  $PROG keygen                   print a fresh base64 key
  $PROG selftest VECTORS_DIR     check the computations against the test vectors

key sources (choose one; default: prompt for the base64 key):
  --key-file FILE       base64 key in FILE (must be chmod 600)
  --key-env VAR         base64 key (ostiary-4: the password) in variable VAR
  --passphrase          prompt for a passphrase; needs --action (and --host-name)
  --master FILE         derive from the fleet master key in FILE; needs --action
  --password-file FILE  ostiary-4 password in FILE (one trailing newline dropped)
  --action NAME         action name for derivation (also the 2nd positional)
  --host-name NAME      host name for derivation (default: HOST as given)

options:
  --protocol P          postern-2 (default) or ostiary-4
  --assert-addr ADDR    ask the server to bind the action to ADDR (postern-2)
  --timeout SECS        bound for connect, challenge and reply together, whole
                        seconds (default $DEFAULT_TIMEOUT)
  --ack-timeout SECS    bound for the acknowledgement, whole seconds (default
                        $DEFAULT_ACK_TIMEOUT: the server answers within 300 s)

HOST[:PORT]: a name, a.b.c.d, [v6] or [v6]:port; the default port is $DEFAULT_PORT.
Prompts read the terminal with echo off, or one line of standard input when
standard input is not a terminal. Transport: bash's /dev/tcp under bash,
else socat, else nc; POSTERN_TRANSPORT=devtcp|socat|nc chooses.

exit codes: 0 accepted (started, already active, closed, not open;
ostiary-4: reply sent), 1 local error (key, password, terminal),
2 no acknowledgement, 3 network error or timeout, 4 acknowledged but
refused, 5 acknowledged but failed to start (close: the server started or
kept the gate open, so the key was an opening action's), 64 usage error.
EOF
}

# ---------------------------------------------------------------------------
# Small helpers

fail_local() {
    printf '%s: %s\n' "$PROG" "$1" >&2
    exit "$EX_LOCAL"
}

fail_usage() {
    printf '%s: %s\n' "$PROG" "$1" >&2
    printf 'run "%s help" for usage\n' "$PROG" >&2
    exit "$EX_USAGE"
}

# The one line of output for a trigger, then exit.
result() {
    printf '%s: %s\n' "$TARGET" "$2"
    exit "$1"
}

# Bytes on standard input -> lower-case hex on standard output.
tohex() {
    od -A n -t x1 -v | tr -d ' \n'
}

# Hex in $1 -> a printf format of \ooo escapes in ESC. No fork, no exec.
esc_of_hex() {
    _eh=$1
    ESC=''
    while [ -n "$_eh" ]; do
        _ev=$((0x${_eh%"${_eh#??}"}))
        _eh=${_eh#??}
        ESC="$ESC\\$((_ev >> 6))$((_ev >> 3 & 7))$((_ev & 7))"
    done
}

# First $2 bytes of hex $1.
hex_head() {
    _hh=$1
    _hr=$1
    _hn=0
    while [ "$_hn" -lt "$2" ] && [ -n "$_hr" ]; do
        _hr=${_hr#??}
        _hn=$((_hn + 1))
    done
    printf '%s' "${_hh%"$_hr"}"
}

sha256_hex() {
    esc_of_hex "$1"
    printf "$ESC" | openssl dgst -sha256 -binary | tohex
}

# HMAC-SHA256(key = hex $1, msg = hex $2), printed as hex. The key and the
# padded key blocks only ever travel through pipes into openssl's stdin.
hmac_hex() {
    _mk=$1
    if [ "${#_mk}" -gt 128 ]; then
        _mk=$(sha256_hex "$_mk")
    fi
    _mi=''
    _mo=''
    _mn=0
    while [ "$_mn" -lt 64 ]; do
        if [ -n "$_mk" ]; then
            _mb=$((0x${_mk%"${_mk#??}"}))
            _mk=${_mk#??}
        else
            _mb=0
        fi
        _mx=$((_mb ^ 54))
        _mi="$_mi\\$((_mx >> 6))$((_mx >> 3 & 7))$((_mx & 7))"
        _mx=$((_mb ^ 92))
        _mo="$_mo\\$((_mx >> 6))$((_mx >> 3 & 7))$((_mx & 7))"
        _mn=$((_mn + 1))
    done
    esc_of_hex "$2"
    _mh=$({ printf "$_mi"; printf "$ESC"; } | openssl dgst -sha256 -binary | tohex)
    esc_of_hex "$_mh"
    { printf "$_mo"; printf "$ESC"; } | openssl dgst -sha256 -binary | tohex
    _mi='' _mo='' _mh='' _mb='' _mx=''
}

# Text -> hex (host names, action names, labels; nothing secret).
hex_of_text() {
    printf '%s' "$1" | tohex
}

# "PST2-R\0", "PST2-A\0" and "PST2" in hex.
LABEL_REPLY=505354322d5200
LABEL_ACK=505354322d4100
GREETING_TAG=50535432

# ASCII space, tab, CR and LF: the only characters a key text may have
# around it.
KEY_SPACE=$(printf ' \t\r\n.')
KEY_SPACE=${KEY_SPACE%.}

# Strip leading and trailing spaces, tabs, CRs and newlines from $1 into TRIMMED.
trim() {
    _ws=$KEY_SPACE
    TRIMMED=$1
    TRIMMED=${TRIMMED#"${TRIMMED%%[!"$_ws"]*}"}
    TRIMMED=${TRIMMED%"${TRIMMED##*[!"$_ws"]}"}
}

# Base64 text $1 -> 32-byte key as hex in KEYHEX. Same rules as the daemon:
# surrounding ASCII space, tab, CR and LF ignored (no other whitespace);
# standard alphabet, padding optional but exactly right if present,
# canonical trailing bits, exactly 32 bytes. On error, sets KEYERR and returns 1. The text and the key only
# travel through a pipe into and out of `openssl base64 -d`.
key_of_b64() {
    KEYHEX=''
    trim "$1"
    _kt=$TRIMMED
    TRIMMED=''
    KEYERR="key is not valid base64; generate one with \`$PROG keygen\`"
    case $_kt in
        '' | *[!A-Za-z0-9+/=]*) return 1 ;;
    esac
    _kb=${_kt%%=*}
    _kp=${_kt#"$_kb"}
    case $_kp in
        '') ;;
        = | ==) [ $((${#_kt} % 4)) -eq 0 ] || return 1 ;;
        *) return 1 ;;
    esac
    case $((${#_kb} % 4)) in
        1) return 1 ;;
        2) _kt="$_kb==" ;;
        3) _kt="$_kb=" ;;
        0) _kt=$_kb ;;
    esac
    # shellcheck disable=SC2017 # whole groups of four only
    _kn=$((${#_kb} / 4 * 3))
    case $((${#_kb} % 4)) in 2) _kn=$((_kn + 1)) ;; 3) _kn=$((_kn + 2)) ;; esac
    if [ "$_kn" -ne 32 ]; then
        KEYERR="key decodes to $_kn bytes, but must be exactly 32; generate one with \`$PROG keygen\`"
        return 1
    fi
    # 43 characters carry 258 bits: the last one's two low bits must be 0.
    _kl=${_kb#"${_kb%?}"}
    case $_kl in
        [AEIMQUYcgkosw048]) ;;
        *) return 1 ;;
    esac
    KEYHEX=$(printf '%s' "$_kt" | openssl base64 -d -A | tohex)
    _kt='' _kb=''
    [ "${#KEYHEX}" -eq 64 ] || { KEYHEX=; return 1; }
}

# Refuse a secret file that group or others can read (or write).
check_private() {
    [ -e "$1" ] || fail_local "cannot read $1: no such file"
    [ -f "$1" ] || fail_local "cannot read $1: not a regular file"
    [ -r "$1" ] || fail_local "cannot read $1: permission denied"
    _pm=$(ls -lnLd -- "$1") || fail_local "cannot read $1"
    _pm=${_pm%% *}
    case $_pm in
        ????------*) ;;
        *) fail_local "$1 is readable by group or others; run chmod 600 $1" ;;
    esac
}

# Whole text of file $1 into FILETEXT (for base64 keys).
read_text_file() {
    FILETEXT=''
    while IFS= read -r _fl || [ -n "$_fl" ]; do
        FILETEXT="$FILETEXT$_fl
"
    done <"$1"
    _fl=''
}

# Read one line without echo from the terminal (or a plain line from a
# non-terminal stdin, for scripts) into SECRET.
prompt_secret() {
    SECRET=''
    if [ -t 0 ]; then
        printf '%s' "$1" >&2
        STTY_RESTORE=1
        stty -echo
        IFS= read -r SECRET || true
        stty echo
        STTY_RESTORE=''
        printf '\n' >&2
    else
        IFS= read -r SECRET || true
    fi
}

# ---------------------------------------------------------------------------
# Addresses

# Dotted quad $1 -> 8 hex digits in V4HEX. No leading zeros (as the daemon).
ipv4_hex() {
    V4HEX=''
    case $1 in
        *.*.*.*.* | *..* | .* | *.) return 1 ;;
        *.*.*.*) ;;
        *) return 1 ;;
    esac
    _ia=$1.
    _in=0
    while [ -n "$_ia" ]; do
        _io=${_ia%%.*}
        _ia=${_ia#*.}
        case $_io in
            '' | *[!0-9]* | 0?* | ????*) return 1 ;;
        esac
        [ "$_io" -le 255 ] || return 1
        V4HEX=$V4HEX$(printf '%02x' "$_io")
        _in=$((_in + 1))
    done
    [ "$_in" -eq 4 ]
}

# Colon-separated hex groups $1 (no "::") -> hex in GROUPHEX, count in NGROUPS.
v6_groups() {
    GROUPHEX=''
    NGROUPS=0
    [ -z "$1" ] && return 0
    case $1 in
        :* | *: | *::*) return 1 ;;
    esac
    _gs=$1:
    while [ -n "$_gs" ]; do
        _gg=${_gs%%:*}
        _gs=${_gs#*:}
        case $_gg in
            '' | ?????* | *[!0-9A-Fa-f]*) return 1 ;;
        esac
        GROUPHEX=$GROUPHEX$(printf '%04x' "$((0x$_gg))")
        NGROUPS=$((NGROUPS + 1))
    done
}

# IPv6 text $1 -> 32 hex digits in V6HEX. Handles "::" and a trailing
# embedded dotted quad; rejects zone ids and anything else.
ipv6_hex() {
    V6HEX=''
    _6a=$1
    case $_6a in
        '' | *[!0-9A-Fa-f:.]*) return 1 ;;
        *:::* | *::*::*) return 1 ;;
        *:*) ;;
        *) return 1 ;;
    esac
    _6tail=''
    case $_6a in
        *.*)
            _6q=${_6a##*:}
            ipv4_hex "$_6q" || return 1
            _6a=${_6a%"$_6q"}
            case $_6a in
                *::) ;;
                *:) _6a=${_6a%:} ;;
                *) return 1 ;;
            esac
            _6tail=$V4HEX
            ;;
    esac
    _6want=8
    [ -n "$_6tail" ] && _6want=6
    case $_6a in
        *::*)
            v6_groups "${_6a%%::*}" || return 1
            _6l=$GROUPHEX
            _6ln=$NGROUPS
            v6_groups "${_6a#*::}" || return 1
            _6n=$((_6want - _6ln - NGROUPS))
            [ "$_6n" -ge 1 ] || return 1
            V6HEX=$_6l
            while [ "$_6n" -gt 0 ]; do
                V6HEX=${V6HEX}0000
                _6n=$((_6n - 1))
            done
            V6HEX=$V6HEX$GROUPHEX$_6tail
            ;;
        *)
            v6_groups "$_6a" || return 1
            [ "$NGROUPS" -eq "$_6want" ] || return 1
            V6HEX=$GROUPHEX$_6tail
            ;;
    esac
    [ "${#V6HEX}" -eq 32 ]
}

ZERO_ADDR=00000000000000000000000000000000
NOT_POSTERN_2="not a postern-2 greeting: the port looks like an ostiary-4 or other service; try --protocol ostiary-4"

# Asserted address $1 ("none" or empty: no assertion) -> 16-byte field
# as hex in ADDRHEX. Returns 1 with ADDRERR set on error.
addr_field() {
    ADDRERR=''
    case $1 in
        '' | none) ADDRHEX=$ZERO_ADDR; return 0 ;;
        *%*) ADDRERR="$1: zone ids cannot be asserted"; return 1 ;;
        *:*)
            ipv6_hex "$1" || { ADDRERR="$1: not an IPv6 address"; return 1; }
            ADDRHEX=$V6HEX
            ;;
        *)
            ipv4_hex "$1" || { ADDRERR="$1: not an IPv4 address"; return 1; }
            ADDRHEX=00000000000000000000ffff$V4HEX
            ;;
    esac
}

# Whether field $ADDRHEX may be asserted (as wire::asserted_allowed in the
# server): not the unspecified addresses, the IPv4 broadcast, multicast,
# IPv6 link-local, IPv4-compatible ::a.b.c.d (except ::1), nor the
# IPv4-mapped forms of the IPv4 ones. Returns 1 with ADDRERR set if not.
assertable() {
    ADDRERR=''
    case $ADDRHEX in
        "$ZERO_ADDR" | 00000000000000000000ffff00000000)
            ADDRERR="$1: the unspecified address cannot be asserted; omit --assert-addr" ;;
        00000000000000000000ffffffffffff)
            ADDRERR="$1: the broadcast address cannot be asserted" ;;
        00000000000000000000ffffe*)
            ADDRERR="$1: a multicast address cannot be asserted" ;;
        00000000000000000000ffff*) ;;
        ff*) ADDRERR="$1: a multicast address cannot be asserted" ;;
        fe[89ab]*) ADDRERR="$1: a link-local address cannot be asserted (there is no room for a zone)" ;;
        00000000000000000000000000000001) ;;
        000000000000000000000000*)
            ADDRERR="$1: an IPv4-compatible address (::a.b.c.d) cannot be asserted; write a.b.c.d" ;;
    esac
    [ -z "$ADDRERR" ]
}

# --assert-addr $1 -> ADDRHEX, or 1 with ADDRERR.
assert_field() {
    addr_field "$1" || return 1
    case $1 in '' | none) return 0 ;; esac
    assertable "$1"
}

# ---------------------------------------------------------------------------
# Key derivation

# Host name $1 as it goes into a salt or fleet message, into NORMHOST:
# "[v6]" or "[v6]:port" -> v6; a name or IPv4 with exactly one ':' loses
# ":port"; then one trailing "." goes; then ASCII letters are lower-cased,
# other bytes unchanged (LC_ALL=C). No IPv6 re-compression.
normalise_host() {
    _nh=$1
    case $_nh in
        \[*\]*) _nh=${_nh#\[}; _nh=${_nh%%\]*} ;;
        \[*) _nh=${_nh#\[} ;;
        *:*:*) ;;
        *:*) _nh=${_nh%%:*} ;;
    esac
    _nh=${_nh%.}
    NORMHOST=$(printf '%s.' "$_nh" | tr 'ABCDEFGHIJKLMNOPQRSTUVWXYZ' 'abcdefghijklmnopqrstuvwxyz')
    NORMHOST=${NORMHOST%.}
}

passphrase_salt() {
    normalise_host "$1"
    _ps=$(printf 'postern-2 passphrase\000%s\000%s' "$NORMHOST" "$2" | openssl dgst -sha256 -binary | tohex)
    hex_head "$_ps" 8
}

# PBKDF2-HMAC-SHA256(passphrase $1, salt hex $2, 600000, 32) -> KEYHEX.
# The passphrase is written to openssl's stdin, never to its argv.
# `enc -P` prints key= (32 bytes for AES-256) from a 48-byte PBKDF2
# output; its first 32 bytes are PBKDF2 block 1, i.e. the 32-byte result.
pbkdf2_key() {
    KEYHEX=''
    _po=$(printf '%s\n' "$1" | openssl enc -aes-256-cbc -pbkdf2 -md sha256 \
        -iter "$PBKDF2_ITERATIONS" -S "$2" -P -pass stdin 2>/dev/null) || return 1
    while IFS= read -r _pl; do
        case $_pl in key=*) KEYHEX=${_pl#key=} ;; esac
    done <<EOF
$_po
EOF
    _po='' _pl=''
    KEYHEX=$(printf '%s' "$KEYHEX" | tr 'A-F' 'a-f')
    [ "${#KEYHEX}" -eq 64 ]
}

# HMAC-SHA256(master hex $1, "postern-2 fleet\0" || host || "\0" || action).
fleet_key() {
    normalise_host "$2"
    _fm=$(printf 'postern-2 fleet\000%s\000%s' "$NORMHOST" "$3" | tohex)
    hmac_hex "$1" "$_fm"
}

# ---------------------------------------------------------------------------
# Messages (hex in, hex out)

reply_hex() { # key greeting addr_field
    printf '%s%s' "$3" "$(hmac_hex "$1" "$LABEL_REPLY${2#????????}$3")"
}

ack_hex() { # key greeting reply body(6 bytes: status reason seconds, as 12 hex digits)
    printf '%s%s' "$4" "$(hmac_hex "$1" "$LABEL_ACK$2$3$4")"
}

# Verify ack $4 for key $1, greeting $2, reply $3, comparing the hex of the
# recomputed MAC. Sets ACK_STATUS, ACK_REASON and ACK_SECONDS (decimal) and
# returns 0 for a genuine ack with a known status (1..6); returns 1 for a
# forged or corrupted one, 2 for a genuine one with an unknown status.
verify_ack() {
    ACK_STATUS='' ACK_REASON='' ACK_SECONDS=''
    [ "${#4}" -eq 76 ] || return 1
    _vb=$(hex_head "$4" 6)
    [ "$(ack_hex "$1" "$2" "$3" "$_vb")" = "$4" ] || return 1
    _vs=${_vb%??????????}
    _vr=${_vb#??}
    _vr=${_vr%????????}
    ACK_STATUS=$((0x$_vs))
    ACK_REASON=$((0x$_vr))
    ACK_SECONDS=$((0x${_vb#????}))
    case $_vs in 01 | 02 | 03 | 04 | 05 | 06) ;; *) return 2 ;; esac
}

# ---------------------------------------------------------------------------
# Output for a verified ack

# Reason byte $1 -> its name (REASON_NAME) and phrase (REASON_PHRASE).
reason_of() {
    case $1 in
        0) REASON_NAME=none REASON_PHRASE="no reason given" ;;
        1) REASON_NAME=cooldown REASON_PHRASE="cooling down" ;;
        2) REASON_NAME=busy REASON_PHRASE="the server is busy" ;;
        3) REASON_NAME=address-binding REASON_PHRASE="the asserted address is not this connection's source (bind_source)" ;;
        4) REASON_NAME=address-not-allowed REASON_PHRASE="the asserted address cannot be acted for" ;;
        5) REASON_NAME=open-for-other-address REASON_PHRASE="it is open for another address" ;;
        6) REASON_NAME=config-changed REASON_PHRASE="the server's config changed; try again" ;;
        7) REASON_NAME=shutting-down REASON_PHRASE="the server is shutting down" ;;
        8) REASON_NAME=addresses-full REASON_PHRASE="the gate is open for as many addresses as it allows" ;;
        16) REASON_NAME=spawn-failed REASON_PHRASE="the program could not be started" ;;
        17) REASON_NAME=run-failed REASON_PHRASE="the run command failed" ;;
        18) REASON_NAME=run-timed-out REASON_PHRASE="the run command timed out" ;;
        19) REASON_NAME=serve-exited REASON_PHRASE="the served program exited at once" ;;
        20) REASON_NAME=state-unwritable REASON_PHRASE="the server could not record the gate" ;;
        *) REASON_NAME=unknown REASON_PHRASE="reason $1" ;;
    esac
}

# Seconds $1 as a short span in DUR: "40 s", "15 min" (rounded up), "2 h",
# "1 h 5 min".
duration() {
    if [ "$1" -lt 60 ]; then
        DUR="$1 s"
        return
    fi
    _dm=$((($1 + 59) / 60))
    if [ "$_dm" -lt 60 ]; then
        DUR="$_dm min"
    elif [ $((_dm % 60)) -eq 0 ]; then
        DUR="$((_dm / 60)) h"
    else
        DUR="$((_dm / 60)) h $((_dm % 60)) min"
    fi
}

# Local HH:MM, $1 seconds from now, into UNTIL (GNU, busybox or BSD date).
until_time() {
    _un=$(date +%s 2>/dev/null) || _un=''
    UNTIL=''
    case $_un in '' | *[!0-9]*) UNTIL='?' ; return ;; esac
    _ut=$((_un + $1))
    UNTIL=$(date -d "@$_ut" +%H:%M 2>/dev/null) ||
        UNTIL=$(date -r "$_ut" +%H:%M 2>/dev/null) || UNTIL='?'
}

# Status $1, reason $2, seconds $3, action name $4 -> exit code in
# ANSWER_RC and the text after "TARGET: " in ANSWER.
answer_line() {
    _an=${4:-the action}
    reason_of "$2"
    case $1 in
        1)
            ANSWER_RC=$EX_OK
            if [ "$3" -gt 0 ]; then
                duration "$3"
                until_time "$3"
                ANSWER="accepted; $_an open for $DUR (until $UNTIL)"
            else
                ANSWER="accepted; $_an started"
            fi
            ;;
        2)
            ANSWER_RC=$EX_OK
            if [ "$3" -gt 0 ]; then
                duration "$3"
                until_time "$3"
                ANSWER="accepted; $_an already open, $DUR left (until $UNTIL)"
            else
                ANSWER="accepted; $_an already running"
            fi
            ;;
        3)
            ANSWER_RC=$EX_REFUSED
            duration "$3"
            if [ "$2" -eq 1 ] && [ "$3" -gt 0 ]; then
                ANSWER="refused: cooling down, try again in $DUR"
            elif [ "$2" -eq 5 ] && [ "$3" -gt 0 ]; then
                ANSWER="refused: it is open for another address, closes in $DUR"
            elif [ "$2" -eq 8 ] && [ "$3" -gt 0 ]; then
                ANSWER="refused: it is open for as many addresses as it allows; the first closes in $DUR"
            else
                ANSWER="refused: $REASON_PHRASE"
            fi
            ;;
        5)
            ANSWER_RC=$EX_OK
            ANSWER="closed; $_an closed now"
            ;;
        6)
            ANSWER_RC=$EX_OK
            ANSWER="not open; $_an was not open, nothing to close"
            ;;
        *)
            ANSWER_RC=$EX_FAILED
            ANSWER="failed: $REASON_PHRASE"
            ;;
    esac
    # close: a gate started or left open means the key opened it.
    if [ -n "${CLOSE_GATE:-}" ]; then
        case $1 in 1 | 2) ANSWER_RC=$EX_FAILED ;; esac
    fi
}

# ---------------------------------------------------------------------------
# Transport. Exactly one connection per run. READER, TRANSPORT_PID and
# WATCHDOG are our own children; cleanup ends them by pid.

TMPD=''
READER=''
TRANSPORT_PID=''
WATCHDOG=''
NOTICE=''
STTY_RESTORE=''
RFD=''
WFD=''

cleanup() {
    # First the files that let the watchdog and the notice act.
    [ -n "$TMPD" ] && rm -f "$TMPD/waiting" "$TMPD"/watchdog.*
    [ -n "$NOTICE" ] && kill "$NOTICE" 2>/dev/null
    [ -n "$WATCHDOG" ] && kill "$WATCHDOG" 2>/dev/null
    [ -n "$READER" ] && kill "$READER" 2>/dev/null
    [ -n "$TRANSPORT_PID" ] && kill "$TRANSPORT_PID" 2>/dev/null
    [ -n "$STTY_RESTORE" ] && stty echo 2>/dev/null
    [ -n "$TMPD" ] && rm -rf "$TMPD"
    NOTICE='' WATCHDOG='' READER='' TRANSPORT_PID='' TMPD=''
}

# SIGALRM from the current watchdog (one that was stopped, whose TERM came
# too late, finds its file gone and sends nothing; should one get through,
# it is ignored here).
on_alarm() {
    if [ -n "$WD_FILE" ] && [ -e "$WD_FILE" ]; then
        [ -n "$READER" ] && kill "$READER" 2>/dev/null
        READER=''
        result "$EX_NET" "connection failed: timed out after $WATCHED s $PHASE"
    fi
}

pick_transport() {
    TRANSPORT=${POSTERN_TRANSPORT:-}
    if [ -z "$TRANSPORT" ]; then
        if [ -n "${BASH_VERSION:-}" ]; then
            TRANSPORT=devtcp
        elif command -v socat >/dev/null 2>&1; then
            TRANSPORT=socat
        elif command -v nc >/dev/null 2>&1; then
            TRANSPORT=nc
        else
            fail_local "no TCP transport: run under bash, or install socat or nc"
        fi
    fi
    case $TRANSPORT in
        devtcp) [ -n "${BASH_VERSION:-}" ] || fail_local "POSTERN_TRANSPORT=devtcp needs bash" ;;
        socat | nc) command -v "$TRANSPORT" >/dev/null 2>&1 || fail_local "$TRANSPORT not found" ;;
        *) fail_local "POSTERN_TRANSPORT must be devtcp, socat or nc" ;;
    esac
}

# Every wait is bounded: a watchdog sends SIGALRM after $1 seconds (the
# connect, challenge and reply together: TIMEOUT; the ack: ACK_TIMEOUT),
# and every blocking read is a background dd we can kill. A watchdog acts
# only while its file in TMPD exists: stopping one removes the file, so
# nothing depends on when the watchdog sees its TERM, and nothing is ever
# waited for.
WD_GEN=0
WD_FILE=''
start_watchdog() {
    WATCHED=$1
    WD_GEN=$((WD_GEN + 1))
    WD_FILE=$TMPD/watchdog.$WD_GEN
    : >"$WD_FILE"
    (
        trap 'kill "$_wsl" 2>/dev/null; exit 0' TERM
        _wsl=''
        sleep "$WATCHED" &
        _wsl=$!
        wait "$_wsl" && [ -e "$WD_FILE" ] && kill -s ALRM "$MAINPID"
    ) </dev/null >/dev/null 2>&1 &
    WATCHDOG=$!
}

stop_watchdog() {
    [ -n "$WD_FILE" ] && rm -f "$WD_FILE"
    WD_FILE=''
    [ -n "$WATCHDOG" ] && kill "$WATCHDOG" 2>/dev/null
    WATCHDOG=''
}

# On a terminal, one line on stderr once the ack has been awaited for 1 s:
# a gate's run may take minutes. It is printed only while $TMPD/waiting
# exists; stop_notice removes it.
start_notice() {
    NOTICE=''
    [ -t 2 ] || return 0
    [ "$ACK_TIMEOUT" -gt 1 ] || return 0
    : >"$TMPD/waiting"
    (
        trap 'kill "$_nsl" 2>/dev/null; exit 0' TERM
        _nsl=''
        sleep 1 &
        _nsl=$!
        if [ -n "${CLOSE_GATE:-}" ]; then _nw="close $CLOSE_GATE"; else _nw="start ${ACTION:-the action}"; fi
        wait "$_nsl" && [ -e "$TMPD/waiting" ] &&
            printf 'waiting for the server to %s\342\200\246\n' "$_nw" >&2
    ) </dev/null >/dev/null &
    NOTICE=$!
}

stop_notice() {
    rm -f "$TMPD/waiting"
    [ -n "$NOTICE" ] && kill "$NOTICE" 2>/dev/null
    NOTICE=''
}

# Why the connection could not be made, worded as the Rust client does.
connect_failed() {
    case $HOST in *:*) _ca="[$HOST]:$PORT" ;; *) _ca="$HOST:$PORT" ;; esac
    _cr=$(transport_reason)
    case $_cr in
        [Cc]onnection\ refused) result "$EX_NET" "connection failed: connection refused by $_ca" ;;
        '') result "$EX_NET" "connection failed: cannot connect to $_ca" ;;
        *) result "$EX_NET" "connection failed: cannot connect to $_ca: $_cr" ;;
    esac
}

# First line of the transport's error output, after its last ": "
# ("Connection refused", "Name or service not known", ...), or nothing.
transport_reason() {
    _tr=''
    if [ -s "$TMPD/err" ]; then
        while IFS= read -r _tl; do
            if [ -n "$_tl" ]; then
                _tr=$_tl
                break
            fi
        done <"$TMPD/err"
    fi
    printf '%s' "${_tr##*: }"
}

open_connection() {
    case $TRANSPORT in
        devtcp)
            # bash only; SIGALRM interrupts a hanging connect.
            # shellcheck disable=SC3025 # only chosen under bash
            if { exec 5<>"/dev/tcp/$HOST/$PORT"; } 2>"$TMPD/err"; then
                RFD=5
                WFD=5
            else
                connect_failed
            fi
            ;;
        nc | socat)
            mkfifo "$TMPD/tx" "$TMPD/rx" || fail_local "cannot create FIFOs in $TMPD"
            if [ "$TRANSPORT" = nc ]; then
                nc "$HOST" "$PORT" <"$TMPD/tx" >"$TMPD/rx" 2>"$TMPD/err" &
            else
                case $HOST in *:*) _sh="[$HOST]" ;; *) _sh=$HOST ;; esac
                socat - "TCP:$_sh:$PORT" <"$TMPD/tx" >"$TMPD/rx" 2>"$TMPD/err" &
            fi
            TRANSPORT_PID=$!
            # Same order as the child opens them, so neither open blocks.
            exec 3>"$TMPD/tx" 4<"$TMPD/rx"
            RFD=4
            WFD=3
            ;;
    esac
}

# Read exactly $1 bytes (fewer only at end of stream) into file $2.
read_exact() {
    dd bs=1 count="$1" <&"$RFD" 3>&- >"$2" 2>/dev/null &
    READER=$!
    # A signal whose trap returns (a stale SIGALRM) ends the wait early:
    # wait again while the reader lives.
    while kill -0 "$READER" 2>/dev/null; do
        wait "$READER"
    done
    READER=''
    RECEIVED=$(tohex <"$2")
}

send_hex() {
    esc_of_hex "$1"
    { printf "$ESC" >&"$WFD"; } 2>/dev/null ||
        result "$EX_NOACK" "no acknowledgement (wrong key, locked out or refused)"
}

# Signal end of our data to nc. OpenBSD nc keeps running after the
# server closes for as long as its standard input is open, so without
# this a missing ack would look like a timeout. socat needs no help: it
# exits half a second after the server closes (and would stop reading
# half a second after our end closed). The server never reads past its
# fixed length, so the half-close some nc variants send cannot disturb it.
end_sending() {
    if [ "$TRANSPORT" = nc ] && [ "$WFD" = 3 ]; then
        exec 3>&-
        WFD=''
    fi
}

# The challenge did not arrive whole: tell a failed connect from a
# server that closed on purpose (a locked-out or over-rate source). (OpenBSD nc cannot show
# a close before the greeting: with its standard input still open it
# keeps waiting, and the exchange ends in the timeout instead.)
closed_early() {
    if [ -n "$TRANSPORT_PID" ]; then
        [ "$WFD" = 3 ] && exec 3>&-
        WFD=''
        wait "$TRANSPORT_PID"
        _rc=$?
        TRANSPORT_PID=''
        if [ "$_rc" -ne 0 ] && [ -z "$RECEIVED" ]; then
            connect_failed
        fi
    fi
    result "$EX_NET" "connection failed: server closed before sending its challenge"
}

# ---------------------------------------------------------------------------
# Commands

parse_target() {
    TARGET=$1
    case $1 in
        \[*\]:*)
            HOST=${1#\[}
            HOST=${HOST%%\]*}
            PORT=${1##*\]:}
            ;;
        \[*\])
            HOST=${1#\[}
            HOST=${HOST%\]}
            PORT=$DEFAULT_PORT
            ;;
        *:*:*)
            HOST=$1
            PORT=$DEFAULT_PORT
            ;;
        *:*)
            HOST=${1%:*}
            PORT=${1##*:}
            ;;
        *)
            HOST=$1
            PORT=$DEFAULT_PORT
            ;;
    esac
    case $HOST in
        '' | -* | *[!A-Za-z0-9._:%-]*) fail_usage "$1: not a host name or address" ;;
    esac
    case $PORT in
        '' | *[!0-9]* | ??????*) fail_usage "bad port in $1: use a number from 1 to 65535" ;;
    esac
    if [ "$PORT" -lt 1 ] || [ "$PORT" -gt 65535 ]; then
        fail_usage "bad port in $1: use a number from 1 to 65535"
    fi
}

cmd_trigger() {
    [ $# -ge 1 ] || fail_usage "trigger needs HOST[:PORT]"
    case $1 in -*) fail_usage "trigger needs HOST[:PORT] first" ;; esac
    parse_target "$1"
    shift
    KEY_FILE='' KEY_ENV='' PASSPHRASE='' MASTER='' HOST_NAME='' ACTION='' ASSERT=''
    TIMEOUT=$DEFAULT_TIMEOUT ACK_TIMEOUT=$DEFAULT_ACK_TIMEOUT PROTOCOL=postern-2 PASSWORD_FILE=
    _positional=''
    _sources=0
    while [ $# -gt 0 ]; do
        _opt=$1
        _val=''
        _has=''
        case $_opt in
            --*=*) _val=${_opt#*=}; _opt=${_opt%%=*}; _has=1 ;;
        esac
        case $_opt in
            --passphrase)
                [ -z "$_has" ] || fail_usage "--passphrase takes no value"
                PASSPHRASE=1
                _sources=$((_sources + 1))
                shift
                continue
                ;;
            --key-file | --key-env | --master | --host-name | --action | --assert-addr | --timeout | --ack-timeout | --protocol | --password-file)
                if [ -z "$_has" ]; then
                    [ $# -ge 2 ] || fail_usage "$_opt needs a value"
                    _val=$2
                    shift
                fi
                shift
                ;;
            -*) fail_usage "unknown option: $_opt" ;;
            *)
                [ -z "$_positional" ] || fail_usage "unexpected argument: $_opt"
                _positional=$_opt
                shift
                continue
                ;;
        esac
        [ -n "$_val" ] || fail_usage "$_opt needs a value"
        case $_opt in
            --key-file) KEY_FILE=$_val; _sources=$((_sources + 1)) ;;
            --key-env) KEY_ENV=$_val; _sources=$((_sources + 1)) ;;
            --master) MASTER=$_val; _sources=$((_sources + 1)) ;;
            --password-file) PASSWORD_FILE=$_val; _sources=$((_sources + 1)) ;;
            --host-name) HOST_NAME=$_val ;;
            --action) ACTION=$_val ;;
            --assert-addr) ASSERT=$_val ;;
            --timeout) TIMEOUT=$_val ;;
            --ack-timeout) ACK_TIMEOUT=$_val ;;
            --protocol) PROTOCOL=$_val ;;
        esac
    done
    if [ -n "${CLOSE_GATE+x}" ]; then
        # close HOST GATE: the closing action is GATE.close unless --action.
        [ -n "$_positional" ] || fail_usage "close needs the GATE to close"
        CLOSE_GATE=$_positional
        [ -n "$ACTION" ] || ACTION=$_positional.close
    elif [ -n "$_positional" ]; then
        [ -z "$ACTION" ] || fail_usage "give the action once: ACTION or --action"
        ACTION=$_positional
    fi

    case $TIMEOUT in
        '' | *[!0-9]* | 0* | ??????*) fail_usage "--timeout must be a whole number of seconds, 1 or more" ;;
    esac
    case $ACK_TIMEOUT in
        '' | *[!0-9]* | 0* | ??????*) fail_usage "--ack-timeout must be a whole number of seconds, 1 or more" ;;
    esac
    [ "$_sources" -le 1 ] ||
        fail_usage "choose one key source: --key-file, --key-env, --passphrase, --master or --password-file"
    _derives=''
    [ -n "$PASSPHRASE" ] || [ -n "$MASTER" ] && _derives=1
    case $PROTOCOL in
        postern-2)
            [ -z "$PASSWORD_FILE" ] || fail_usage "--password-file is for --protocol ostiary-4"
            assert_field "$ASSERT" || fail_usage "--assert-addr $ADDRERR"
            ;;
        ostiary-4)
            if [ -n "$KEY_FILE" ] || [ -n "$_derives" ]; then
                fail_usage "ostiary-4 takes a password: use --password-file, --key-env or the prompt"
            fi
            [ -z "$ASSERT" ] || fail_usage "--assert-addr needs postern-2; ostiary-4 cannot carry an address"
            ;;
        *) fail_usage "--protocol must be postern-2 or ostiary-4" ;;
    esac
    [ -z "$HOST_NAME" ] || [ -n "$_derives" ] || fail_usage "--host-name only applies to --passphrase and --master"
    if [ -n "$_derives" ]; then
        [ -n "$ACTION" ] || fail_usage "--passphrase and --master need --action NAME"
        [ -n "$HOST_NAME" ] || HOST_NAME=$HOST
    fi

    # Load or derive the secret before connecting: the server's deadline
    # must not be spent on PBKDF2.
    KEYHEX=''
    if [ -n "$KEY_ENV" ]; then
        case $KEY_ENV in
            [0-9]* | *[!A-Za-z0-9_]*) fail_usage "--key-env needs a variable name" ;;
        esac
        eval "_kv=\${$KEY_ENV-}"
        [ -n "$_kv" ] || fail_local "environment variable $KEY_ENV is not set"
        # Keep it out of the environment of every program run from here.
        unset "$KEY_ENV"
    fi
    if [ "$PROTOCOL" = ostiary-4 ]; then
        if [ -n "$PASSWORD_FILE" ]; then
            check_private "$PASSWORD_FILE"
            KEYHEX=$(tohex <"$PASSWORD_FILE")
            case $KEYHEX in *0d0a) KEYHEX=${KEYHEX%0d0a} ;; *0a) KEYHEX=${KEYHEX%0a} ;; esac
            [ -n "$KEYHEX" ] || fail_local "$PASSWORD_FILE is empty"
        elif [ -n "$KEY_ENV" ]; then
            KEYHEX=$(hex_of_text "$_kv")
            _kv=''
        else
            prompt_secret "password for $TARGET: "
            KEYHEX=$(hex_of_text "$SECRET")
            SECRET=''
            [ -n "$KEYHEX" ] || fail_local "empty password"
        fi
        [ "${#KEYHEX}" -le 2048 ] || fail_local "the password is longer than 1024 bytes"
    elif [ -n "$KEY_FILE" ]; then
        check_private "$KEY_FILE"
        read_text_file "$KEY_FILE"
        key_of_b64 "$FILETEXT" || fail_local "$KEY_FILE: $KEYERR"
        FILETEXT=''
    elif [ -n "$KEY_ENV" ]; then
        key_of_b64 "$_kv" || fail_local "\$$KEY_ENV: $KEYERR"
        _kv=''
    elif [ -n "$MASTER" ]; then
        check_private "$MASTER"
        read_text_file "$MASTER"
        key_of_b64 "$FILETEXT" || fail_local "$MASTER: $KEYERR"
        FILETEXT=''
        KEYHEX=$(fleet_key "$KEYHEX" "$HOST_NAME" "$ACTION")
    elif [ -n "$PASSPHRASE" ]; then
        prompt_secret "passphrase for $TARGET: "
        [ -n "$SECRET" ] || fail_local "empty passphrase"
        pbkdf2_key "$SECRET" "$(passphrase_salt "$HOST_NAME" "$ACTION")" ||
            fail_local "openssl could not derive the key (openssl 1.1.1 or later is needed for -pbkdf2)"
        SECRET=''
    else
        prompt_secret "base64 key for $TARGET: "
        [ -n "$SECRET" ] || fail_local "empty key"
        key_of_b64 "$SECRET" || fail_local "$KEYERR"
        SECRET=''
    fi

    pick_transport
    MAINPID=$$
    trap '' PIPE
    trap on_alarm ALRM
    TMPD=$(mktemp -d "${TMPDIR:-/tmp}/postern.XXXXXX") || fail_local "cannot create a temporary directory"
    case $HOST in *:*) PHASE="connecting to [$HOST]:$PORT" ;; *) PHASE="connecting to $HOST:$PORT" ;; esac
    start_watchdog "$TIMEOUT"
    open_connection
    PHASE="waiting for the challenge"

    if [ "$PROTOCOL" = ostiary-4 ]; then
        read_exact 32 "$TMPD/salt"
        [ "${#RECEIVED}" -eq 64 ] || closed_early
        PHASE="sending the reply"
        send_hex "$(hmac_hex "$KEYHEX" "$RECEIVED")"
        end_sending
        # Wait for the server's close so the reply is surely delivered.
        PHASE="waiting for the server to close"
        read_exact 1 "$TMPD/eof"
        result "$EX_OK" "reply sent (ostiary-4 gives no acknowledgement)"
    fi

    # The tag first: an ostiary-4 server sends 32 bytes and then waits, so
    # reading 36 would only end in the timeout.
    read_exact 4 "$TMPD/tag"
    _g=$RECEIVED
    [ "${#_g}" -eq 8 ] || closed_early
    [ "$_g" = "$GREETING_TAG" ] || result "$EX_NET" "$NOT_POSTERN_2"
    read_exact 32 "$TMPD/greeting"
    _g=$_g$RECEIVED
    [ "${#_g}" -eq 72 ] || closed_early
    _r=$(reply_hex "$KEYHEX" "$_g" "$ADDRHEX")
    PHASE="sending the reply"
    send_hex "$_r"
    end_sending
    stop_watchdog
    PHASE="waiting for the acknowledgement"
    start_watchdog "$ACK_TIMEOUT"
    start_notice
    # Exactly 38 bytes; anything after them is never looked at.
    read_exact 38 "$TMPD/ack"
    stop_notice
    _a=$RECEIVED
    # A close (even after part of an ack) is the server's way of saying no.
    [ "${#_a}" -eq 76 ] ||
        result "$EX_NOACK" "no acknowledgement (wrong key, locked out or refused)"
    verify_ack "$KEYHEX" "$_g" "$_r" "$_a"
    case $? in
        0) ;;
        2) result "$EX_NOACK" "no acknowledgement (status $ACK_STATUS is not one this client knows)" ;;
        *) result "$EX_NOACK" "no acknowledgement (the acknowledgement did not verify: wrong key or tampering)" ;;
    esac
    KEYHEX=''
    answer_line "$ACK_STATUS" "$ACK_REASON" "$ACK_SECONDS" "${CLOSE_GATE:-$ACTION}"
    result "$ANSWER_RC" "$ANSWER"
}

# close HOST[:PORT] GATE [options]: a trigger of GATE's closing action.
cmd_close() {
    [ $# -ge 1 ] || fail_usage "close needs HOST[:PORT]"
    CLOSE_GATE=''
    cmd_trigger "$@"
}

cmd_keygen() {
    [ $# -eq 0 ] || fail_usage "keygen takes no arguments"
    openssl rand -base64 32 || fail_local "openssl rand failed"
}

# ---------------------------------------------------------------------------
# Self-test against tests/vectors/*.vectors

ST_PASS=0
ST_FAIL=0

check() { # name got want
    if [ "$2" = "$3" ]; then
        ST_PASS=$((ST_PASS + 1))
        printf 'ok   %s\n' "$1"
    else
        ST_FAIL=$((ST_FAIL + 1))
        printf 'FAIL %s\n     got  %s\n     want %s\n' "$1" "$2" "$3"
    fi
}

# Calls $2 (a function) once per blank-line-separated case of file $1,
# with the case's "name = value" lines in variables v_NAME.
each_case() {
    _cf=$1
    _cb=$2
    _cnames=''
    while :; do
        _line=''
        IFS= read -r _line
        _more=$?
        case $_line in
            '#'*) ;;
            *' = '*)
                _cn=${_line%% = *}
                case $_cn in '' | *[!a-z0-9_]*) continue ;; esac
                eval "v_$_cn=\${_line#* = }"
                _cnames="$_cnames $_cn"
                ;;
            *)
                if [ -n "$_cnames" ]; then
                    "$_cb"
                    for _cn in $_cnames; do unset "v_$_cn"; done
                    _cnames=''
                fi
                ;;
        esac
        [ "$_more" -eq 0 ] || break
    done <"$_cf"
    if [ -n "$_cnames" ]; then
        "$_cb"
        for _cn in $_cnames; do unset "v_$_cn"; done
    fi
}

# Hex $1 -> the bytes as text in TEXT (no NUL bytes; trailing newlines kept).
text_of_hex() {
    esc_of_hex "$1"
    TEXT=$(printf "$ESC.")
    TEXT=${TEXT%.}
}

# verify_ack's verdict on key $1, greeting $2, reply $3, ack $4, as the
# negative vectors write it: "status=N reason=N seconds=N" or "reject".
ack_verdict() {
    if verify_ack "$1" "$2" "$3" "$4"; then
        printf 'status=%s reason=%s seconds=%s' "$ACK_STATUS" "$ACK_REASON" "$ACK_SECONDS"
    else
        printf reject
    fi
}

# The acks every case of postern-2.vectors carries (its header):
# NAME:STATUS:REASON:SECONDS.
VECTOR_ACKS="started:1:0:900 already_active:2:0:600 refused:3:1:40 failed:4:17:0 closed:5:0:0 not_open:6:0:0"

st_postern_case() {
    _n="postern-2 case ${v_case:-?}"
    check "$_n greeting tag" "$(hex_head "$v_greeting" 4)" "$GREETING_TAG"
    key_of_b64 "$v_key" || KEYHEX="(decode error: $KEYERR)"
    check "$_n key" "$KEYHEX" "$v_key_hex"
    assert_field "$v_addr" || ADDRHEX="(error: $ADDRERR)"
    check "$_n addr_field" "$ADDRHEX" "$v_addr_field"
    check "$_n mac_input" "$LABEL_REPLY${v_greeting#????????}$v_addr_field" "$v_mac_input"
    _r=$(reply_hex "$v_key_hex" "$v_greeting" "$v_addr_field")
    check "$_n reply" "$_r" "$v_reply"
    for _st in $VECTOR_ACKS; do
        _nm=${_st%%:*}
        _rest=${_st#*:}
        _s=${_rest%%:*}
        _rest=${_rest#*:}
        _why=${_rest%%:*}
        _secs=${_rest#*:}
        eval "_want=\$v_ack_$_nm"
        _b=$(printf '%02x%02x%08x' "$_s" "$_why" "$_secs")
        check "$_n ack_$_nm" "$(ack_hex "$v_key_hex" "$v_greeting" "$v_reply" "$_b")" "$_want"
        check "$_n verify ack_$_nm" "$(ack_verdict "$v_key_hex" "$v_greeting" "$v_reply" "$_want")" \
            "status=$_s reason=$_why seconds=$_secs"
    done
    # Tampering: another status byte under the same MAC, and a flipped MAC bit.
    _tam=02${v_ack_started#01}
    check "$_n forged status rejected" "$(ack_verdict "$v_key_hex" "$v_greeting" "$v_reply" "$_tam")" reject
    _last=${v_ack_started#"${v_ack_started%?}"}
    case $_last in 0) _flip=1 ;; *) _flip=0 ;; esac
    _tam=${v_ack_started%?}$_flip
    check "$_n flipped mac rejected" "$(ack_verdict "$v_key_hex" "$v_greeting" "$v_reply" "$_tam")" reject
}

st_negative_case() {
    _n="negative case ${v_case:-?} (${v_check:-?})"
    case ${v_check:-} in
        ack)
            check "$_n" "$(ack_verdict "$v_key_hex" "$v_greeting" "$v_reply" "$v_ack")" "$v_expect"
            if verify_ack "$v_key_hex" "$v_greeting" "$v_reply" "$v_ack"; then
                reason_of "$ACK_REASON"
                if [ "$REASON_NAME" = unknown ]; then
                    answer_line "$ACK_STATUS" "$ACK_REASON" "$ACK_SECONDS" ""
                    check "$_n shown as a number" "$ANSWER" "refused: reason $ACK_REASON"
                fi
            fi
            ;;
        greeting)
            if [ "$(hex_head "$v_greeting" 4)" = "$GREETING_TAG" ]; then _got=accept; else _got=reject; fi
            check "$_n" "$_got" "$v_expect"
            ;;
        key)
            text_of_hex "$v_text_hex"
            key_of_b64 "$TEXT" || KEYHEX=reject
            TEXT=''
            check "$_n" "$KEYHEX" "$v_expect"
            ;;
        addr)
            addr_field "$v_addr" || ADDRHEX="(error: $ADDRERR)"
            check "$_n field" "$ADDRHEX" "$v_addr_field"
            assert_field "$v_addr" && _got=allow || _got=refuse
            check "$_n $v_addr" "$_got" "$v_expect"
            ;;
        *) check "$_n" "unknown check" "ack, greeting, key or addr" ;;
    esac
}

st_ostiary_case() {
    check "ostiary-4 case ${v_case:-?} reply" \
        "$(hmac_hex "$(hex_of_text "$v_password")" "$v_salt")" "$v_reply"
}

st_kdf_case() {
    _n="kdf case ${v_case:-?}"
    text_of_hex "$v_passphrase_hex"
    _pp=$TEXT
    TEXT=''
    [ -z "${v_passphrase+set}" ] || check "$_n passphrase bytes" "$(hex_of_text "$v_passphrase")" "$v_passphrase_hex"
    normalise_host "$v_host"
    check "$_n host_normalised" "$NORMHOST" "$v_host_normalised"
    check "$_n salt" "$(passphrase_salt "$v_host" "$v_action")" "$v_salt"
    check "$_n iterations" "$v_iterations" "$PBKDF2_ITERATIONS"
    key_of_b64 "$v_passphrase_key"
    _want=$KEYHEX
    pbkdf2_key "$_pp" "$v_salt" || KEYHEX="(openssl enc -pbkdf2 failed)"
    check "$_n passphrase_key" "$KEYHEX" "$_want"
    key_of_b64 "$v_fleet_key"
    _want=$KEYHEX
    key_of_b64 "$v_master"
    check "$_n fleet_key" "$(fleet_key "$KEYHEX" "$v_host" "$v_action")" "$_want"
}

st_builtin() {
    # RFC 4231 test cases 2 and 6 (the second has a key longer than a block).
    check "hmac rfc4231 case 2" "$(hmac_hex "$(hex_of_text Jefe)" "$(hex_of_text 'what do ya want for nothing?')")" \
        5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843
    _k=''
    _i=0
    while [ "$_i" -lt 131 ]; do _k=${_k}aa; _i=$((_i + 1)); done
    check "hmac rfc4231 case 6" "$(hmac_hex "$_k" "$(hex_of_text 'Test Using Larger Than Block-Size Key - Hash Key First')")" \
        60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54
    for _c in \
        "::1=00000000000000000000000000000001" \
        "2001:db8::=20010db8000000000000000000000000" \
        "fe80::1:2=fe800000000000000000000000010002" \
        "1:2:3:4:5:6:7:8=00010002000300040005000600070008" \
        "1:2:3:4:5:6:7::=00010002000300040005000600070000" \
        "::ffff:192.0.2.1=00000000000000000000ffffc0000201" \
        "64:ff9b::198.51.100.7=0064ff9b0000000000000000c6336407" \
        "2001:DB8:0:0:0:0:0:42=20010db8000000000000000000000042" \
        "10.1.2.3=00000000000000000000ffff0a010203"; do
        addr_field "${_c%%=*}" || ADDRHEX="(error: $ADDRERR)"
        check "addr ${_c%%=*}" "$ADDRHEX" "${_c#*=}"
    done
    for _c in 1:2:3:4:5:6:7:8:9 1::2::3 12345::1 :1:2:3:4:5:6:7 1:2:3:4:5:6:7: fe80::1%eth0 \
        1.2.3 1.2.3.256 01.2.3.4 1.2.3.4.5 ::1.2.3 g::1 :: 0.0.0.0 1:2:3:4:5:6:7:8:: \
        febf::1 ::ffff:239.1.2.3 ::0.0.0.2; do
        assert_field "$_c" && _got=accepted || _got=rejected
        check "addr $_c rejected" "$_got" rejected
    done
    for _c in fec0::1 ::ffff:1.2.3.4 223.255.255.255 240.0.0.1 fe7f::1; do
        assert_field "$_c" && _got=accepted || _got=rejected
        check "addr $_c allowed" "$_got" accepted
    done
    for _c in Zm9v '!!!!' 'Zm9=v' Zh== \
        AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB= \
        AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==; do
        key_of_b64 "$_c" && _got=accepted || _got=rejected
        check "base64 $_c rejected" "$_got" rejected
    done
    for _c in 0b 0c; do
        text_of_hex "${_c}41414543417751464267634943516f4c4441304f4478415245684d554652595847426b61477877644868383d"
        key_of_b64 "$TEXT" && _got=accepted || _got=rejected
        check "base64 with leading \\x$_c rejected" "$_got" rejected
    done
    text_of_hex 202041414543417751464267634943516f4c4441304f4478415245684d554652595847426b61477877644868380d0a
    key_of_b64 "$TEXT" || KEYHEX=rejected
    check "base64 unpadded with whitespace" "$KEYHEX" 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
    for _c in "Web-17.Example.COM.=web-17.example.com" "[2001:DB8::1]=2001:db8::1" \
        "2001:DB8::1=2001:db8::1" "192.0.2.1:7001=192.0.2.1" "h..=h."; do
        normalise_host "${_c%%=*}"
        check "host ${_c%%=*} normalised" "$NORMHOST" "${_c#*=}"
    done
    normalise_host "$(printf 'W\303\211b')"
    check "host W\\303\\211b normalised" "$(hex_of_text "$NORMHOST")" 77c38962
    for _c in "0=0 s" "59=59 s" "60=1 min" "61=2 min" "900=15 min" "3599=1 h" "3600=1 h" \
        "3601=1 h 1 min" "5400=1 h 30 min" "7200=2 h" "90000=25 h"; do
        duration "${_c%%=*}"
        check "duration ${_c%%=*}" "$DUR" "${_c#*=}"
    done
    for _c in \
        "1 0 0=0 accepted; sshd started" \
        "2 0 0=0 accepted; sshd already running" \
        "3 1 40=4 refused: cooling down, try again in 40 s" \
        "3 5 120=4 refused: it is open for another address, closes in 2 min" \
        "3 2 0=4 refused: the server is busy" \
        "3 4 0=4 refused: the asserted address cannot be acted for" \
        "4 17 0=5 failed: the run command failed" \
        "4 99 0=5 failed: reason 99" \
        "5 0 0=0 closed; sshd closed now" \
        "6 0 0=0 not open; sshd was not open, nothing to close" \
        "3 8 90=4 refused: it is open for as many addresses as it allows; the first closes in 2 min" \
        "3 8 0=4 refused: the gate is open for as many addresses as it allows"; do
        # shellcheck disable=SC2086 # three numbers
        set -- ${_c%%=*}
        answer_line "$1" "$2" "$3" sshd
        check "answer $1/$2/$3" "$ANSWER_RC $ANSWER" "${_c#*=}"
    done
    # close: a gate started or left open is a failure (an opening key).
    CLOSE_GATE=sshd
    for _c in 1=5 2=5 5=0 6=0 3=4; do
        answer_line "${_c%%=*}" 0 0 sshd
        check "close answer ${_c%%=*}" "$ANSWER_RC" "${_c#*=}"
    done
    unset CLOSE_GATE
    answer_line 1 0 0 ''
    check "answer with no action name" "$ANSWER" "accepted; the action started"
}

cmd_selftest() {
    [ $# -eq 1 ] || fail_usage "selftest needs VECTORS_DIR"
    for _f in postern-2 postern-2-negative ostiary-4 kdf; do
        [ -r "$1/$_f.vectors" ] || fail_local "$1/$_f.vectors: not readable"
    done
    each_case "$1/postern-2.vectors" st_postern_case
    each_case "$1/postern-2-negative.vectors" st_negative_case
    each_case "$1/ostiary-4.vectors" st_ostiary_case
    each_case "$1/kdf.vectors" st_kdf_case
    st_builtin
    printf '%s passed, %s failed\n' "$ST_PASS" "$ST_FAIL"
    [ "$ST_FAIL" -eq 0 ]
}

# ---------------------------------------------------------------------------

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

[ $# -ge 1 ] || { usage >&2; exit "$EX_USAGE"; }
command -v openssl >/dev/null 2>&1 || fail_local "openssl not found"
_cmd=$1
shift
case $_cmd in
    trigger) unset CLOSE_GATE; cmd_trigger "$@" ;;
    close) cmd_close "$@" ;;
    keygen) cmd_keygen "$@" ;;
    selftest) cmd_selftest "$@" ;;
    help | -h | --help) usage ;;
    *) fail_usage "unknown command: $_cmd" ;;
esac
