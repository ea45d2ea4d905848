#!/usr/bin/env bash
# Size of the static x86_64 release binary, built as the image and the release build it
# (scripts/build-release.sh), checked to be statically linked.
# Prints a markdown table: bytes, MB (1 MB = 1,000,000 bytes) and MiB, against the 6 MB target.
# Usage: bench/size.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# The Dockerfile's builder, the release workflow and scripts/check-image-recipe.sh all build
# with scripts/build-release.sh; so does this.
build_cmd='scripts/build-release.sh --build x86_64 --out .cache/size/sendsms-whitelister'
artifact=.cache/size/sendsms-whitelister
echo "size: $build_cmd" >&2
sh -ec "$build_cmd" >&2

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
