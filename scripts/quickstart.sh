#!/usr/bin/env bash
# Back up a directory into a local kura repository, creating the repository (and a random
# password kept in ~/.config/kura/password) on first use.
#
#   scripts/quickstart.sh DIR [REPOSITORY]     (REPOSITORY defaults to ./kura-repo)
set -euo pipefail
src=${1:?usage: scripts/quickstart.sh DIR [REPOSITORY]}
repo=${2:-$PWD/kura-repo}
root="$(cd "$(dirname "$0")/.." && pwd)"

cargo build --release --locked -q --manifest-path "$root/Cargo.toml" -p kura-cli
kura="$root/target/release/kura"

pwfile="${XDG_CONFIG_HOME:-$HOME/.config}/kura/password"
if [ ! -s "$pwfile" ]; then
    mkdir -p "$(dirname "$pwfile")"
    (umask 077; head -c 24 /dev/urandom | base64 > "$pwfile")
    echo "created a random repository password in $pwfile — keep a copy somewhere safe"
fi
export KURA_REPOSITORY="$repo" KURA_PASSWORD_FILE="$pwfile"

if [ ! -e "$repo/config" ]; then
    "$kura" init
fi
"$kura" backup "$src"
"$kura" snapshots
echo
echo "restore with: KURA_REPOSITORY=$repo KURA_PASSWORD_FILE=$pwfile $kura restore latest --target /tmp/restored"
