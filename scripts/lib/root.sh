# Sourced by the scripts that need root (deps, demo, test, bench, fresh-check). It makes each of them work
# three ways: run as root, run as a user who has sudo (the script asks sudo itself), and run through
# `sudo scripts/...` (sudo's secure_path hides the user's Rust toolchain; it is found again here).

# Re-runs the calling script as root when it is not, keeping the caller's toolchain and target directory.
weft_become_root() {
  if [ "$(id -u)" = 0 ]; then
    weft_find_toolchain
    return 0
  fi
  if ! command -v sudo >/dev/null 2>&1; then
    echo "$(basename "$0") needs root (network namespaces, packages): run it as root; this machine has no sudo" >&2
    exit 1
  fi
  echo "$(basename "$0") needs root: asking sudo" >&2
  # A user's PATH often lacks the sbin directories that root's tools (ip, bridge, nft) live in.
  exec sudo env PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" \
    CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}" RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}" \
    ${CARGO_TARGET_DIR:+CARGO_TARGET_DIR="$CARGO_TARGET_DIR"} \
    ${WEFT_TEST_THREADS:+WEFT_TEST_THREADS="$WEFT_TEST_THREADS"} \
    "$0" "$@"
}

# Under `sudo scripts/...` the PATH is sudo's secure_path: look for cargo where the invoking user keeps it.
weft_find_toolchain() {
  command -v cargo >/dev/null 2>&1 && return 0
  [ -n "${SUDO_USER:-}" ] || return 0
  local home
  home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
  if [ -n "$home" ] && [ -x "$home/.cargo/bin/cargo" ]; then
    export PATH="$home/.cargo/bin:$PATH"
    export CARGO_HOME="${CARGO_HOME:-$home/.cargo}"
    if [ -d "$home/.rustup" ]; then
      export RUSTUP_HOME="${RUSTUP_HOME:-$home/.rustup}"
    fi
  fi
}

# Cargo needs to be there before anything is built; say where to get it instead of failing in the middle.
weft_need_cargo() {
  command -v cargo >/dev/null 2>&1 && return 0
  echo "cargo is not on PATH${SUDO_USER:+ (nor in ~$SUDO_USER/.cargo/bin)}: install the Rust toolchain (rustup, 1.85 or newer) first" >&2
  exit 1
}

# Remembers when the build started, for weft_return_ownership; only needed when sudo made us root.
weft_mark_start() {
  if [ -n "${SUDO_UID:-}" ] && [ "$SUDO_UID" != 0 ]; then
    WEFT_STARTED_MARK=$(mktemp)
  fi
}

# When sudo made us root, hand what the build wrote in the user's checkout and cargo home back to the user, so
# their next build without sudo still works. Only files written since the script started change hands.
weft_return_ownership() {
  local mark="${WEFT_STARTED_MARK:-}" dir
  [ -n "$mark" ] || return 0
  for dir in "${CARGO_TARGET_DIR:-$PWD/target}" "${CARGO_HOME:-}" "$PWD/bench-results"; do
    [ -n "$dir" ] && [ -d "$dir" ] || continue
    find "$dir" -xdev -user 0 -newer "$mark" -exec chown -h "$SUDO_UID:$SUDO_GID" {} + 2>/dev/null || true
  done
  rm -f "$mark"
  WEFT_STARTED_MARK=
}
