#!/usr/bin/env bash
# Static release binaries for Linux x86_64 and aarch64, proven by running `demo`.
#
#   scripts/build-release.sh                      # both, into dist/, with SHA256SUMS
#   scripts/build-release.sh --out DIR x86_64     # some of them (x86_64|amd64, aarch64|arm64)
#   scripts/build-release.sh --setup ARCH         # only install the toolchain for ARCH
#   scripts/build-release.sh --build ARCH [--out FILE]
#                                                 # one binary, no demo: the Dockerfile's step
#
# Every binary is built by the same command (build_one below), here, in the release workflow
# and in the Dockerfile's builder stage, so the image holds what the release attaches. Foreign
# architectures cross-compile with rustup's target and Debian's cross gcc (the linker, and the
# C compiler `ring` needs); glibc is linked statically (+crt-static), so the result runs on any
# Linux of that architecture and in an image without libc. The aarch64 binary runs `demo` under
# Debian's qemu-user on an x86_64 host. What a fresh Debian machine lacks is installed (root,
# apt-get; rustup for the target).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
name=sendsms-whitelister

die() { echo "build-release: $*" >&2; exit 1; }

# ARCH in Docker's (amd64, arm64) or the kernel's (x86_64, aarch64) spelling -> the kernel's.
machine() {
  case $1 in
    x86_64 | amd64) echo x86_64 ;;
    aarch64 | arm64) echo aarch64 ;;
    *) die "unsupported architecture '$1' (x86_64/amd64 or aarch64/arm64)" ;;
  esac
}

# Debian's name for an architecture, as in libc6-dev-ARCH-cross.
debian_arch() { case $1 in x86_64) echo amd64 ;; aarch64) echo arm64 ;; esac; }

apt_install() {
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    die "missing $*: install them (Debian: apt-get install $*)"
  fi
  echo "build-release: installing $*" >&2
  export DEBIAN_FRONTEND=noninteractive
  # A fresh machine or image has no package lists yet.
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
}

# Installs the Rust target and, for a foreign architecture, the cross toolchain; prints the
# environment the build needs, one NAME=VALUE a line.
toolchain() {
  local m=$1 triple=$1-unknown-linux-gnu
  rustup target list --installed | grep -qx "$triple" || rustup target add "$triple" >&2
  if [[ $m != "$(uname -m)" ]]; then
    local gcc=$m-linux-gnu-gcc
    command -v "$gcc" >/dev/null && [[ -d /usr/$m-linux-gnu/lib ]] ||
      apt_install "gcc-${m//_/-}-linux-gnu" "libc6-dev-$(debian_arch "$m")-cross"
    local var=${triple//-/_}
    echo "CARGO_TARGET_${var^^}_LINKER=$gcc"
    echo "CC_$var=$gcc"
    echo "AR_$var=$m-linux-gnu-ar"
  fi
}

# The one build command. RUSTFLAGS with an explicit --target applies to the target only, not
# to build scripts and proc macros, which stay dynamic host programs.
build_one() {
  local m=$1 env
  mapfile -t env < <(toolchain "$m")
  env ${env[@]+"${env[@]}"} RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --target "$m-unknown-linux-gnu"
}

artifact() { echo "${CARGO_TARGET_DIR:-$root/target}/$1-unknown-linux-gnu/release/$name"; }

assert_static() {
  local bin=$1
  command -v readelf >/dev/null || apt_install binutils
  if readelf -lW "$bin" | grep -q INTERP; then die "$bin has a PT_INTERP program header (dynamic)"; fi
  if readelf -dW "$bin" | grep -q '(NEEDED)'; then die "$bin needs shared libraries"; fi
  readelf -hW "$bin" | awk -F: '/Machine/ { gsub(/^ +/, "", $2); print "  machine: " $2 }'
}

# Runs `demo` (an in-process emulator on loopback, no network) with the binary, under
# qemu-user when it is foreign.
run_demo() {
  local m=$1 bin=$2 runner=()
  if [[ $m != "$(uname -m)" ]]; then
    command -v "qemu-$m" >/dev/null || apt_install qemu-user
    runner=("qemu-$m")
  fi
  local log
  log=$(mktemp)
  if ! timeout 300 ${runner[@]+"${runner[@]}"} "$bin" demo >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    rm -f "$log"
    die "$bin demo failed${runner:+ under ${runner[*]}}"
  fi
  echo "  demo: ok${runner:+ (under ${runner[*]})}, $(wc -l <"$log") lines"
  rm -f "$log"
}

out=""
build_only=""
setup_only=""
archs=()
while (($#)); do
  case $1 in
    --out) out=${2:?--out needs a path}; shift 2 ;;
    # An empty ARCH (a builder without BuildKit sets no TARGETARCH) means this machine's.
    --build) build_only=$(machine "${2:-$(uname -m)}"); shift 2 ;;
    --setup) setup_only=$(machine "${2:-$(uname -m)}"); shift 2 ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
    *) archs+=("$(machine "$1")"); shift ;;
  esac
done

if [[ -n $setup_only ]]; then
  toolchain "$setup_only" >/dev/null
  exit 0
fi
if [[ -n $build_only ]]; then
  build_one "$build_only"
  if [[ -n $out ]]; then mkdir -p "$(dirname "$out")" && cp "$(artifact "$build_only")" "$out"; fi
  exit 0
fi

((${#archs[@]})) || archs=(x86_64 aarch64)
out=${out:-$root/dist}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
[[ -n $version ]] || die "no version in Cargo.toml"
mkdir -p "$out"
rm -f "$out/SHA256SUMS"
files=()
for m in "${archs[@]}"; do
  echo "=== $name $version for $m-unknown-linux-gnu"
  start=$SECONDS
  build_one "$m"
  bin=$(artifact "$m")
  echo "  built in $((SECONDS - start)) s: $(stat -c %s "$bin") bytes"
  assert_static "$bin"
  run_demo "$m" "$bin"
  files+=("$name-$version-$m-unknown-linux-gnu")
  cp "$bin" "$out/${files[-1]}"
done
(cd "$out" && sha256sum -- "${files[@]}" >SHA256SUMS && sha256sum -c --quiet SHA256SUMS)
echo "=== $out"
(cd "$out" && ls -l -- "${files[@]}" SHA256SUMS)
