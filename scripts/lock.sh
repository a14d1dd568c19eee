#!/usr/bin/env bash
# Re-resolve requirements/toolchain.in into the two locks, each in a throwaway virtualenv.
#   default: ansible-core 2.19 + ansible 12.3.0   CentOS 7: ansible-core 2.16.19 + ansible 9.13.0
set -euo pipefail
cd "$(dirname "$0")/.."
resolve() {  # $1 lock file, $2.. ansible pins, header from the existing lock is kept
  local lock=$1; shift
  local tmp; tmp=$(mktemp -d)
  python3 -m venv "$tmp/venv"
  "$tmp/venv/bin/pip" install --quiet --disable-pip-version-check "$@" -r requirements/toolchain.in
  { grep '^#' "$lock"; "$tmp/venv/bin/pip" freeze --exclude-editable; } > "$tmp/lock"
  mv "$tmp/lock" "$lock"
  rm -rf "$tmp"
  echo "lock: wrote $lock"
}
resolve requirements/lock.txt "ansible-core==2.19.14" "ansible==12.3.0"
resolve requirements/lock-el7.txt "ansible-core==2.16.19" "ansible==9.13.0"
