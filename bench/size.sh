#!/usr/bin/env bash
# Size of the static release binary, built with the Dockerfile's own command (the one
# scripts/check-image-recipe.sh asserts is the Dockerfile's), checked to be statically linked.
# Prints a markdown table: bytes, MB (1 MB = 1,000,000 bytes) and MiB, against the 6 MB target.
# Usage: bench/size.sh
set -euo pipefail
cd "$(dirname "$0")/.."
build_cmd='RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target x86_64-unknown-linux-gnu'
target_dir=${CARGO_TARGET_DIR:-target}
artifact=$target_dir/x86_64-unknown-linux-gnu/release/sendsms-whitelister

# The command must be the Dockerfile's, character for character.
mapfile -t dockerfile_builds < <(grep -oE 'RUSTFLAGS=.*cargo build[^&\\]*' Dockerfile | sed -E 's/[[:space:]]+$//' | sort -u)
if [[ ${#dockerfile_builds[@]} -ne 1 || ${dockerfile_builds[0]} != "$build_cmd" ]]; then
  printf 'size: the Dockerfile builds with:\n%s\nthis script with:\n%s\n' "${dockerfile_builds[*]}" "$build_cmd" >&2
  exit 1
fi
echo "size: $build_cmd" >&2
sh -ec "$build_cmd -q" >&2

"$artifact" --version | grep -q '^sendsms-whitelister ' || { echo "size: $artifact is not the real binary" >&2; exit 1; }
static=yes
if command -v readelf >/dev/null; then
  if readelf -lW "$artifact" | grep -q INTERP || readelf -dW "$artifact" | grep -q '(NEEDED)'; then static=no; fi
else
  static="unchecked (no readelf)"
fi
size=$(stat -c %s "$artifact")
target=6000000
verdict=$(awk -v s="$size" -v t="$target" 'BEGIN {
  if (s < t) printf "met (%.3f MB under)", (t - s) / 1e6; else printf "**missed** by %d bytes (%.3f MB, %.1f%%)", s - t, (s - t) / 1e6, (s - t) * 100 / t }')

echo "### Static release binary"
echo
echo "Built with \`$build_cmd\` ($(rustc --version)); statically linked: $static."
echo
echo "| figure | value |"
echo "|---|---|"
echo "| size, bytes | $size |"
echo "| size, MB (10^6 bytes) | $(awk -v s="$size" 'BEGIN { printf "%.3f", s / 1e6 }') |"
echo "| size, MiB (2^20 bytes) | $(awk -v s="$size" 'BEGIN { printf "%.3f", s / 1048576 }') |"
echo "| target: under 6 MB (6,000,000 bytes) | $verdict |"
