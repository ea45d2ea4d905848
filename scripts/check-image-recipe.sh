#!/usr/bin/env bash
# Prove the Dockerfile's recipe without a Docker engine (run as root), for each platform the
# release image is built for (default: amd64 and arm64):
#  1. the builder stage builds with scripts/build-release.sh, the release binaries' command,
#     and the final stage copies its output;
#  2. the builder stage, replayed here with TARGETARCH set (its COPY and RUN lines, verbatim,
#     in a context holding only what it COPYs), builds the binary: on this x86_64 machine the
#     arm64 build is a cross-compilation, as on a buildx builder;
#  3. the result is statically linked (no PT_INTERP, no shared libraries), for that machine;
#  4. it runs `demo` in an empty root holding only the binary, at its path in the image, the
#     CA bundle that distroless ships, and the /dev nodes every container runtime creates:
#     as uid 65532, in a network namespace of its own with nothing but loopback. What runs
#     there runs in the image. A foreign binary runs under qemu-user, whose x86_64 program and
#     libraries sit apart in /.qemu (an aarch64 program cannot load them).
#  5. `health` fails fast when nothing answers, and `health --url` passes against the
#     emulator (the compose demo's healthchecks), in that same empty root.
#
#   sudo scripts/check-image-recipe.sh [amd64|arm64 ...]
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_script=scripts/build-release.sh
out_in_builder=out/sendsms-whitelister  # relative to the builder's WORKDIR /src
bin_in_image=/usr/local/bin/sendsms-whitelister
ca_in_image=/etc/ssl/certs/ca-certificates.crt
uid=65532

# Inside the new network namespace (the script re-runs itself there): ROOTFS [RUNNER...].
if [[ ${1:-} == --in-netns ]]; then
  rootfs=$2
  shift 2
  ip link set lo up
  in_image=(env -i PATH=/usr/local/bin HOME=/home/nonroot "$(command -v chroot)" "--userspec=$uid:$uid" "$rootfs" "$@" "$bin_in_image")

  echo "--- demo, in the empty root, as uid $uid, loopback only${1:+, under qemu-user}"
  timeout 300 "${in_image[@]}" demo

  echo "--- health with nothing listening must fail, and fast"
  start=$SECONDS
  if timeout 30 "${in_image[@]}" health >/dev/null 2>&1; then echo "health succeeded with no server" >&2; exit 1; fi
  (( SECONDS - start < 15 )) || { echo "health took $((SECONDS - start))s to fail" >&2; exit 1; }

  echo "--- health --url against the emulator must pass"
  "${in_image[@]}" emulator --listen 127.0.0.1:8089 >/dev/null 2>&1 &
  emulator=$!
  trap 'kill $emulator 2>/dev/null || true' EXIT
  for _ in $(seq 100); do
    if "${in_image[@]}" health --url http://127.0.0.1:8089/ip >/dev/null 2>&1; then echo "health --url: ok"; exit 0; fi
    sleep 0.2
  done
  echo "health --url http://127.0.0.1:8089/ip never succeeded" >&2
  exit 1
fi

cd "$root"
[[ $(id -u) -eq 0 ]] || { echo "run as root (chroot and unshare need it)" >&2; exit 1; }
platforms=("$@")
((${#platforms[@]})) || platforms=(amd64 arm64)
missing=()
for tool in file readelf ldd chroot unshare ip timeout; do command -v "$tool" >/dev/null || missing+=("$tool"); done
[[ -f $ca_in_image ]] || missing+=(ca-certificates)
if ((${#missing[@]})); then
  echo "installing: file binutils iproute2 ca-certificates (missing: ${missing[*]})"
  apt-get update -qq && apt-get install -y -qq file binutils iproute2 ca-certificates >/dev/null
fi

echo "=== 1. the builder builds with $build_script, and the image gets its output"
# The builder stage, continuation lines joined, comments dropped.
stage=$(awk '/^FROM .* AS builder$/ { inside = 1; next } /^FROM / { inside = 0 } inside' Dockerfile |
  grep -v '^[[:space:]]*#' | sed -e ':a' -e '/\\$/N; s/\\\n//; ta')
# shellcheck disable=SC2016 # a literal $BUILDPLATFORM
grep -qE '^FROM --platform=\$BUILDPLATFORM .* AS builder$' Dockerfile ||
  { echo "the builder does not run on \$BUILDPLATFORM (it would run emulated)" >&2; exit 1; }
grep -qx 'ARG TARGETARCH' <<<"$stage" || { echo "the builder does not take ARG TARGETARCH" >&2; exit 1; }
# Every cargo build in the builder goes through the script, for TARGETARCH.
if grep -q 'cargo ' <<<"$stage"; then echo "the builder calls cargo itself, not $build_script" >&2; exit 1; fi
builds=$(grep -oE "$build_script --build \"\\\$TARGETARCH\"[^&]*" <<<"$stage" | sed -E 's/[[:space:]]+$//')
grep -qx "$build_script --build \"\$TARGETARCH\" --out $out_in_builder" <<<"$builds" ||
  { printf 'no final build to %s in the builder:\n%s\n' "$out_in_builder" "$builds" >&2; exit 1; }
grep -qE "^COPY --from=builder /src/$out_in_builder $bin_in_image\$" Dockerfile ||
  { echo "the Dockerfile does not copy /src/$out_in_builder to $bin_in_image" >&2; exit 1; }
grep -qE '^FROM --platform' <(awk '/^FROM / { last = $0 } END { print last }' Dockerfile) &&
  { echo "the final stage pins a platform: it must be the target's" >&2; exit 1; }
echo "$builds"

# The context gets only what the builder COPYs, and its target/ is the repository's target
# dir (or $CARGO_TARGET_DIR), so the dependency cache the image keeps in a layer is shared.
context=$root/.cache/image-recipe/context
target_dir=${CARGO_TARGET_DIR:-$root/target}

replay() {
  local targetarch=$1
  rm -rf "$context"
  mkdir -p "$context" "$target_dir"
  ln -s "$target_dir" "$context/target"
  while IFS= read -r line; do
    read -r instruction args <<<"$line"
    case $instruction in
      "" | WORKDIR) ;;
      ARG)
        # TARGETARCH is set per platform below; REVISION keeps its default (build.rs then
        # names the commit "unknown", as the context holds no .git).
        [[ $args == TARGETARCH || $args == REVISION=* ]] ||
          { echo "the replay does not support: $line" >&2; return 1; } ;;
      COPY)
        read -ra words <<<"$args"
        dest=$context/${words[-1]}
        for src in "${words[@]:0:${#words[@]}-1}"; do
          [[ $src != --* ]] || { echo "unsupported: $line" >&2; return 1; }
          if [[ -d $src ]]; then mkdir -p "$dest" && cp -a "$src/." "$dest/"
          elif [[ $dest == */ ]]; then mkdir -p "$dest" && cp -a "$src" "$dest"
          else mkdir -p "$(dirname "$dest")" && cp -a "$src" "$dest"; fi
        done
        echo "COPY $args" ;;
      RUN)
        echo "RUN $args    (TARGETARCH=$targetarch)"
        (cd "$context" && unset CARGO_TARGET_DIR CARGO_BUILD_TARGET_DIR &&
          TARGETARCH=$targetarch sh -ec "$args") ;;
      *) echo "the replay does not support: $line" >&2; return 1 ;;
    esac
  done <<<"$stage"
}

# Puts a dynamically linked qemu-user program and everything it loads under ROOTFS/.qemu;
# prints the command that runs it there (its own loader, its own library path).
install_qemu() {
  local rootfs=$1 machine=$2 qemu lib
  command -v "qemu-$machine" >/dev/null || { apt-get update -qq && apt-get install -y -qq qemu-user >/dev/null; }
  qemu=$(readlink -f "$(command -v "qemu-$machine")")
  mkdir -p "$rootfs/.qemu"
  install -m 0755 "$qemu" "$rootfs/.qemu/"
  local loader=""
  while read -r lib; do
    install -m 0755 "$(readlink -f "$lib")" "$rootfs/.qemu/$(basename "$lib")"
    [[ $lib == */ld-linux* ]] && loader=/.qemu/$(basename "$lib")
  done < <(ldd "$qemu" | grep -oE '/[^ ]+')
  [[ -n $loader ]] || { echo "no loader found for $qemu" >&2; return 1; }
  echo "$loader --library-path /.qemu /.qemu/$(basename "$qemu")"
}

for platform in "${platforms[@]}"; do
  case $platform in
    amd64) machine=x86_64 elf='x86-64' ;;
    arm64) machine=aarch64 elf='ARM aarch64' ;;
    *) echo "unsupported platform $platform (amd64 or arm64)" >&2; exit 1 ;;
  esac
  echo
  echo "=== 2. linux/$platform: replay the Dockerfile's builder stage, its COPY and RUN lines verbatim"
  start=$SECONDS
  replay "$platform"
  binary=$context/$out_in_builder
  echo "replayed in $((SECONDS - start)) s"

  echo "=== 3. linux/$platform: statically linked, for $machine"
  file -L "$binary"
  file -L "$binary" | grep -q "$elf" || { echo "not an $elf binary" >&2; exit 1; }
  file -L "$binary" | grep -qE 'static(-pie)? linked|statically linked' || { echo "not static per file(1)" >&2; exit 1; }
  if readelf -lW "$binary" | grep -q 'INTERP'; then echo "has a PT_INTERP program header" >&2; exit 1; fi
  if readelf -dW "$binary" | grep -q '(NEEDED)'; then echo "needs shared libraries" >&2; exit 1; fi
  size=$(stat -c %s "$binary")
  echo "no PT_INTERP, no NEEDED; size: $size bytes ($(awk -v s="$size" 'BEGIN { printf "%.2f MiB", s / 1048576 }'))"

  echo "=== 4./5. linux/$platform: run it in an empty root: $bin_in_image, $ca_in_image and the runtime's /dev nodes"
  rootfs=$(mktemp -d)
  chmod 0755 "$rootfs"  # the image's / is world-readable; mktemp makes 0700
  install -D -m 0755 "$binary" "$rootfs$bin_in_image"
  install -D -m 0644 "$(readlink -f $ca_in_image)" "$rootfs$ca_in_image"
  # The device nodes every OCI runtime (runc, crun, containerd) creates in a container's /dev,
  # distroless or not. The static binary needs /dev/urandom: a static glibc has no dlsym, so
  # the getrandom crate falls back from the getrandom(2) wrapper to that file.
  mkdir -m 0755 "$rootfs/dev"
  for node in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
    IFS=: read -r name major minor <<<"$node"
    mknod -m 0666 "$rootfs/dev/$name" c "$major" "$minor"
  done
  runner=()
  if [[ $machine != "$(uname -m)" ]]; then read -ra runner < <(install_qemu "$rootfs" "$machine"); fi
  (cd "$rootfs" && find . -mindepth 1 -not -path './.qemu/*' | sort)
  ((${#runner[@]} == 0)) || echo "./.qemu: ${runner[*]} and $(($(find "$rootfs/.qemu" -type f | wc -l) - 1)) x86_64 libraries"
  if ! unshare --net -- "$root/scripts/check-image-recipe.sh" --in-netns "$rootfs" ${runner[@]+"${runner[@]}"}; then
    rm -rf "$rootfs"
    exit 1
  fi
  rm -rf "$rootfs"
  echo "linux/$platform: PASS (static $machine binary, $size bytes, runs demo in an empty root)"
done

echo
echo "image recipe: PASS (${platforms[*]})"
