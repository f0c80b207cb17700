# shellcheck shell=bash
# Shared by scripts/demo, scripts/test and .ci/run. Source it; it defines functions and variables only.
#
# Environment:
#   P11RELAY_BUILD_DIR   build directory (default: build)
#   P11RELAY_SKIP_APT=1  do not touch apt at all (packages are known to be installed)

P11RELAY_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
P11RELAY_BUILD_DIR=${P11RELAY_BUILD_DIR:-build}
case $P11RELAY_BUILD_DIR in
  /*) ;;
  *) P11RELAY_BUILD_DIR=$P11RELAY_ROOT/$P11RELAY_BUILD_DIR ;;
esac

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# packages SECTION... — the package names of those sections of scripts/packages.txt
packages() {
  local want=" $* " section="" line
  while IFS= read -r line || [[ -n $line ]]; do
    line=${line%%#*}
    line=${line//[[:space:]]/}
    [[ -z $line ]] && continue
    if [[ $line =~ ^\[(.+)\]$ ]]; then
      section=${BASH_REMATCH[1]}
    elif [[ $want == *" $section "* ]]; then
      printf '%s\n' "$line"
    fi
  done <"$P11RELAY_ROOT/scripts/packages.txt"
}

# install_packages SECTION... — apt-get install what is missing (sudo when not root).
# Skips apt entirely when everything is already installed, so re-runs need neither network nor sudo.
install_packages() {
  local pkgs missing=() p
  mapfile -t pkgs < <(packages "$@")
  if [[ ${P11RELAY_SKIP_APT:-0} == 1 ]]; then
    log "P11RELAY_SKIP_APT=1: not installing packages"
    return 0
  fi
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then
    log "all ${#pkgs[@]} Debian packages already installed"
    return 0
  fi
  local sudo=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null || die "not root and no sudo: install these packages first: ${missing[*]}"
    sudo=(sudo)
  fi
  log "installing ${missing[*]}"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

# build [MESON_SETUP_ARGS...] — meson setup (the options apply only to a new build directory: an existing one
# keeps its configuration, so a second run rebuilds nothing) + ninja.
# P11RELAY_TARGETS (space-separated ninja targets, default: all) limits what is built.
build() {
  cd "$P11RELAY_ROOT" || die "cannot cd to $P11RELAY_ROOT"
  if [[ ! -f $P11RELAY_BUILD_DIR/build.ninja ]]; then
    log "meson setup $P11RELAY_BUILD_DIR $*"
    meson setup "$P11RELAY_BUILD_DIR" "$@"
  fi
  local targets=()
  read -r -a targets <<<"${P11RELAY_TARGETS:-}"
  log "ninja -C $P11RELAY_BUILD_DIR ${targets[*]}"
  ninja -C "$P11RELAY_BUILD_DIR" "${targets[@]}"
}

# The interpreter provision.py is written for (Debian's, stdlib only).
python3_bin() {
  if [[ -x /usr/bin/python3 ]]; then echo /usr/bin/python3; else command -v python3; fi
}
