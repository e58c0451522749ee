#!/usr/bin/env bash
# Builds the test bed's Go tools from their pinned modules, once per version.
#
#   e2e/tools/build.sh [TOOL...]     (default: all of kubernetes etcd kwok helm argo argo4 artifact-store)
#
# Binaries are cached outside the checkout, keyed by the tool's go.mod and go.sum, so a
# fresh clone on the same machine (CI) reuses them; target/tools/bin gets symlinks.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache="${DELEGATE_PODS_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/delegate-pods/tools}"
links="$root/target/tools/bin"
export GOFLAGS="${GOFLAGS:--buildvcs=false} -mod=mod"
export CGO_ENABLED=0

# version_of MODULE DIR: the version DIR/go.mod requires
version_of() { awk -v m="$1" '$1==m && $2 ~ /^v/ {print $2; exit} $1=="require" && $2==m {print $3; exit}' "$2/go.mod"; }

# Rough first-build times measured on a 2-core machine, to tell a newcomer what to expect.
declare -A took=([kubernetes]="about 6 minutes" [etcd]="about 40 s" [kwok]="about 1.5 minutes"
  [helm]="about 1.5 minutes" [argo]="about 6 minutes" [argo4]="about 6 minutes"
  [artifact-store]="about 20 s")

# The functions a tool's recipe calls besides its own, so that a change to them rebuilds it.
recipe_helpers() { if [[ "$1" == argo* ]]; then echo build_argo_release; fi; }

own_source() { find "$1" -maxdepth 1 -name '*.go' ! -name tools.go | sort | while read -r f; do cat "$f"; done; }

build_tool() {
  local tool="$1" dir="$here/$1" key out started
  # A tool's own Go source (not the tools.go that only pins imports) is part of its recipe.
  key="$({ cat "$dir/go.mod" "$dir/go.sum"; own_source "$dir"; declare -f "build_$tool" $(recipe_helpers "$tool"); } | sha256sum | cut -c1-12)"
  out="$cache/$tool-$key"
  mkdir -p "$links"
  if [[ -f "$out/.complete" ]]; then
    echo "tools: $tool cached in $out"
  else
    started=$SECONDS
    echo "tools: building $tool into $out (first time on this machine: ${took[$tool]:-a few minutes} on 2 cores)"
    rm -rf "$out.tmp" && mkdir -p "$out.tmp"
    (cd "$dir" && "build_$tool" "$out.tmp")
    rm -rf "$out" && mv "$out.tmp" "$out" && touch "$out/.complete"
    echo "tools: built $tool in $((SECONDS - started)) s"
  fi
  for b in "$out"/*; do ln -sfn "$b" "$links/$(basename "$b")"; done
}

build_kubernetes() {
  local v; v="$(version_of k8s.io/kubernetes .)"
  local ld="-s -w -X k8s.io/component-base/version.gitVersion=$v -X k8s.io/component-base/version.gitMajor=1"
  ld+=" -X k8s.io/component-base/version.gitMinor=$(echo "$v" | cut -d. -f2) -X k8s.io/component-base/version.gitTreeState=clean"
  go build -trimpath -ldflags "$ld" -o "$1/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes/cmd/kubelet
}

build_etcd() {
  local v; v="$(version_of go.etcd.io/etcd/server/v3 .)"
  go build -trimpath -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.Version=${v#v}" -o "$1/etcd" go.etcd.io/etcd/server/v3
}

build_kwok() {
  go build -trimpath -ldflags "-s -w" -o "$1/kwok" sigs.k8s.io/kwok/cmd/kwok
}

build_helm() {
  local v; v="$(version_of helm.sh/helm/v3 .)"
  go build -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$v" -o "$1/helm" helm.sh/helm/v3/cmd/helm
}

# Argo's workflow-controller and executor (argoexec, which the real nodes run as an image) for
# the Argo end-to-end tests and demo. Also ships the minimal CRDs of the same release in
# $1/argo-crds and its example workflows in $1/argo-examples (target/tools/bin/argo-*).
build_argo() { build_argo_release github.com/argoproj/argo-workflows/v3 "$1" ""; }

# Argo 4 beside it (a test fixture, never shipped; see argo4/go.mod), its files suffixed `4`:
# workflow-controller4, argoexec4, argo4-crds, argo4-examples.
build_argo4() { build_argo_release github.com/argoproj/argo-workflows/v4 "$1" 4; }

# The S3-compatible store Argo's artifact examples use (a test fixture; see artifact-store/).
build_artifact-store() {
  go build -trimpath -ldflags "-s -w" -o "$1/artifact-store" .
}

# build_argo_release MODULE OUT SUFFIX
build_argo_release() {
  local m="$1" out="$2" suffix="$3" v info dir commit
  v="$(version_of "$m" .)"
  # `go list -m` names no directory before the module is downloaded: on a fresh machine the
  # CRDs would be copied from /manifests. `go mod download` downloads and then names it.
  info="$(go mod download -json "$m@$v")"
  dir="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' <<<"$info")"
  commit="$(sed -n 's/^[[:space:]]*"Hash": "\([0-9a-f]*\)".*/\1/p' <<<"$info")"
  [[ -d "$dir/manifests/base/crds/minimal" ]] || { echo "tools: $m@$v has no CRDs in '$dir'" >&2; return 1; }
  # The module's zip leaves out symbolic links, and the repository's
  # workflow/executor/osspecific/signal_linux.go is one (to signal_darwin.go): without it the
  # executor does not build for Linux. Build from a copy of the module with the link's target
  # put back in its place (the module cache itself is read-only, overlays included).
  local work os
  work="$(mktemp -d)"
  # Removed however the build ends (a failed step would skip a plain rm under `set -e`).
  trap 'rm -rf "$work"; trap - RETURN' RETURN
  cp -r "$dir" "$work/argo-workflows" && chmod -R u+w "$work/argo-workflows"
  os="$work/argo-workflows/workflow/executor/osspecific"
  [[ -e "$os/signal_linux.go" ]] || cp "$os/signal_darwin.go" "$os/signal_linux.go"
  cp go.mod go.sum tools.go "$work/"
  (cd "$work" && go mod edit -replace "$m=./argo-workflows" && mkdir bin &&
    go build -trimpath \
      -ldflags "-s -w -X $m.version=$v -X $m.gitTag=$v -X $m.gitCommit=$commit -X $m.gitTreeState=clean" \
      -o bin/ "$m/cmd/workflow-controller" "$m/cmd/argoexec" &&
    mv bin/workflow-controller "$out/workflow-controller$suffix" && mv bin/argoexec "$out/argoexec$suffix")
  mkdir -p "$out/argo$suffix-crds" "$out/argo$suffix-examples"
  cp "$dir"/manifests/base/crds/minimal/argoproj.io_*.yaml "$out/argo$suffix-crds/"
  cp "$dir"/examples/*.yaml "$out/argo$suffix-examples/"
  chmod u+w "$out/argo$suffix"-crds/*.yaml "$out/argo$suffix"-examples/*.yaml
}

tools=("$@")
[[ ${#tools[@]} -gt 0 ]] || tools=(kubernetes etcd kwok helm argo argo4 artifact-store)
for t in "${tools[@]}"; do build_tool "$t"; done
