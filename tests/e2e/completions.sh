#!/usr/bin/env bash
# Goal: the bash, zsh and fish completions in client/completions/ offer
# subcommands, options, --protocol values, inventory hosts, @groups and
# actions, each shell driven its own way (see completion.bash).
set -uo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/completion.bash"

require_tools "bash zsh fish" bash zsh fish
find_binaries
lab_init
PATH="$(dirname "$POSTERN"):$PATH"
INVDIR=$LAB/inv
completion_inventory "$INVDIR"
export XDG_CONFIG_HOME=$INVDIR

check_completions bash "$E2E_ROOT/client/completions/postern.bash"
check_completions zsh "$E2E_ROOT/client/completions"
check_completions fish "$E2E_ROOT/client/completions/postern.fish"
finish
