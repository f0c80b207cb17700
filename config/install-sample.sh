#!/bin/sh
# meson install script: install the sample configurations into DIR (e.g. /etc/p11relay), but never over a
# file that is already there (an operator's edited config). Usage: install-sample.sh DIR FILE...
set -eu
dir=${DESTDIR:-}$1
shift
[ -n "${MESON_INSTALL_DRY_RUN:-}" ] && exit 0
mkdir -p "$dir"
for f in "$@"; do
  dest=$dir/$(basename "$f")
  if [ -e "$dest" ]; then
    echo "Keeping $dest (the sample is $f)"
  else
    echo "Installing $f to $dir"
    install -m 0644 "$f" "$dest"
  fi
done
