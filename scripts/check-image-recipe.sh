#!/usr/bin/env bash
# Prove the Dockerfile's recipe without a Docker engine (run as root):
#  1. the build command here is the Dockerfile's, character for character;
#  2. the Dockerfile's builder stage, replayed here (its COPY and RUN lines, verbatim, in a
#     context holding only what it COPYs), builds the binary;
#  3. the result is statically linked (no PT_INTERP, no shared libraries);
#  4. it runs `demo` in an empty root holding only the binary, at its path in the image, the
#     CA bundle that distroless ships, and the /dev nodes every container runtime creates:
#     as uid 65532, in a network namespace of its own with nothing but loopback. What runs
#     there runs in the image.
#  5. `health` fails fast when nothing answers, and `health --url` passes against the
#     emulator (the compose demo's healthchecks), in that same empty root.
#
#   sudo scripts/check-image-recipe.sh
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_cmd='RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target x86_64-unknown-linux-gnu'
artifact=target/x86_64-unknown-linux-gnu/release/sendsms-whitelister  # as in the Dockerfile
bin_in_image=/usr/local/bin/sendsms-whitelister
ca_in_image=/etc/ssl/certs/ca-certificates.crt
uid=65532

# Inside the new network namespace (the script re-runs itself there).
if [[ ${1:-} == --in-netns ]]; then
  rootfs=$2
  ip link set lo up
  in_image=(env -i PATH=/usr/local/bin HOME=/home/nonroot "$(command -v chroot)" --userspec=$uid:$uid "$rootfs" "$bin_in_image")

  echo "--- demo, in the empty root, as uid $uid, loopback only"
  timeout 180 "${in_image[@]}" demo

  echo "--- health with nothing listening must fail, and fast"
  start=$SECONDS
  if timeout 30 "${in_image[@]}" health >/dev/null 2>&1; then echo "health succeeded with no server" >&2; exit 1; fi
  (( SECONDS - start < 15 )) || { echo "health took $((SECONDS - start))s to fail" >&2; exit 1; }

  echo "--- health --url against the emulator must pass"
  "${in_image[@]}" emulator --listen 127.0.0.1:8089 >/dev/null 2>&1 &
  emulator=$!
  trap 'kill $emulator 2>/dev/null || true' EXIT
  for _ in $(seq 50); do
    if "${in_image[@]}" health --url http://127.0.0.1:8089/ip >/dev/null 2>&1; then echo "health --url: ok"; exit 0; fi
    sleep 0.2
  done
  echo "health --url http://127.0.0.1:8089/ip never succeeded" >&2
  exit 1
fi

cd "$root"
[[ $(id -u) -eq 0 ]] || { echo "run as root (chroot and unshare need it)" >&2; exit 1; }
missing=()
for tool in file readelf ldd chroot unshare ip timeout; do command -v "$tool" >/dev/null || missing+=("$tool"); done
[[ -f $ca_in_image ]] || missing+=(ca-certificates)
if ((${#missing[@]})); then
  echo "installing: file binutils iproute2 ca-certificates (missing: ${missing[*]})"
  apt-get update -qq && apt-get install -y -qq file binutils iproute2 ca-certificates >/dev/null
fi

echo "=== 1. the build command is the Dockerfile's"
mapfile -t dockerfile_builds < <(grep -oE 'RUSTFLAGS=.*cargo build[^&\\]*' Dockerfile | sed -E 's/[[:space:]]+$//' | sort -u)
if [[ ${#dockerfile_builds[@]} -ne 1 || ${dockerfile_builds[0]} != "$build_cmd" ]]; then
  printf 'Dockerfile builds with:\n%s\nthis script with:\n%s\n' "${dockerfile_builds[*]}" "$build_cmd" >&2
  exit 1
fi
grep -qE "^COPY --from=builder /src/$artifact $bin_in_image\$" Dockerfile ||
  { echo "the Dockerfile does not copy /src/$artifact to $bin_in_image" >&2; exit 1; }
echo "$build_cmd"

echo "=== 2. replay the Dockerfile's builder stage: its COPY and RUN lines, verbatim"
# The context gets only what the builder COPYs, and its target/ is the repository's target
# dir (or $CARGO_TARGET_DIR), so the dependency cache the image keeps in a layer is shared.
context=$root/.cache/image-recipe/context
target_dir=${CARGO_TARGET_DIR:-$root/target}
rm -rf "$context"
mkdir -p "$context" "$target_dir"
ln -s "$target_dir" "$context/target"
# The builder stage, continuation lines joined, comments dropped.
stage=$(awk '/^FROM .* AS builder$/ { inside = 1; next } /^FROM / { inside = 0 } inside' Dockerfile |
  grep -v '^[[:space:]]*#' | sed -e ':a' -e '/\\$/N; s/\\\n//; ta')
while IFS= read -r line; do
  read -r instruction args <<<"$line"
  case $instruction in
    "" | WORKDIR) ;;
    COPY)
      read -ra words <<<"$args"
      dest=$context/${words[-1]}
      for src in "${words[@]:0:${#words[@]}-1}"; do
        [[ $src != --* ]] || { echo "unsupported: $line" >&2; exit 1; }
        if [[ -d $src ]]; then mkdir -p "$dest" && cp -a "$src/." "$dest/"
        elif [[ $dest == */ ]]; then mkdir -p "$dest" && cp -a "$src" "$dest"
        else mkdir -p "$(dirname "$dest")" && cp -a "$src" "$dest"; fi
      done
      echo "COPY $args" ;;
    RUN)
      echo "RUN $args"
      (cd "$context" && unset CARGO_TARGET_DIR CARGO_BUILD_TARGET_DIR && sh -ec "$args") ;;
    *) echo "the replay does not support: $line" >&2; exit 1 ;;
  esac
done <<<"$stage"
binary=$context/$artifact
echo "=== 3. statically linked"
# Not the dependency layer's stub (an empty main that would exit 0 on anything).
"$binary" --version | grep -q '^sendsms-whitelister ' || { echo "$binary is not the real binary" >&2; exit 1; }
file -L "$binary"
file -L "$binary" | grep -qE 'static(-pie)? linked|statically linked' || { echo "not static per file(1)" >&2; exit 1; }
if readelf -lW "$binary" | grep -q 'INTERP'; then echo "has a PT_INTERP program header" >&2; exit 1; fi
if readelf -dW "$binary" | grep -q '(NEEDED)'; then echo "needs shared libraries" >&2; exit 1; fi
ldd "$binary" 2>&1 | grep -qE 'not a dynamic executable|statically linked' || { ldd "$binary"; exit 1; }
size=$(stat -c %s "$binary")
echo "no PT_INTERP, no NEEDED; size: $size bytes ($(awk -v s="$size" 'BEGIN { printf "%.2f MiB", s / 1048576 }'))"

echo "=== 4./5. run it in an empty root: $bin_in_image, $ca_in_image and the runtime's /dev nodes"
rootfs=$(mktemp -d)
chmod 0755 "$rootfs"  # the image's / is world-readable; mktemp makes 0700
trap 'rm -rf "$rootfs"' EXIT
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
(cd "$rootfs" && find . -mindepth 1 | sort)
unshare --net -- "$root/scripts/check-image-recipe.sh" --in-netns "$rootfs"

echo
echo "image recipe: PASS (static binary, $size bytes, runs demo in an empty root)"
