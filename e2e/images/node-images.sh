#!/usr/bin/env bash
# Builds the images every real node of the test bed imports, as OCI archives in
# target/images/node/ (no registry can be reached here, so nothing is ever pulled):
#   e2e/images/node-images.sh PROXY_WAITER_BINARY
# - pause.tar: registry.k8s.io/pause:3.10, the sandbox image (pause/pause.c, gcc -static);
# - busybox.tar: docker.io/library/busybox:1.35, Debian's busybox-static (1.35) with its
#   applets (not `latest`, which Kubernetes always pulls);
# - proxy-waiter.tar: the product image, exactly as `make images` builds it;
# - argoexec.tar: quay.io/argoproj/argoexec at the version of e2e/tools/argo, Argo's executor
#   as `make tools` builds it (static), so step pods on real nodes run the real one.
# Each is rebuilt only when what it is made of changed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$root/target/images/node"
waiter="$1"
buildah=(buildah --storage-driver vfs)
mkdir -p "$out"

# up_to_date ARCHIVE INPUT...: the archive exists and is newer than every input.
up_to_date() {
  local archive="$1"; shift
  [[ -f "$archive" ]] || return 1
  for input in "$@"; do [[ "$archive" -nt "$input" ]] || return 1; done
}

# image ARCHIVE NAME ROOTFS CONFIG...: an image from scratch holding ROOTFS, with buildah
# config options CONFIG.
image() {
  local archive="$1" name="$2" rootfs="$3" container
  shift 3
  container="$("${buildah[@]}" from scratch)"
  "${buildah[@]}" copy "$container" "$rootfs" / >/dev/null
  "${buildah[@]}" config --env PATH=/bin "$@" "$container"
  rm -f "$archive.tmp"
  "${buildah[@]}" commit --quiet "$container" "oci-archive:$archive.tmp:$name" >/dev/null
  "${buildah[@]}" rm "$container" >/dev/null
  mv "$archive.tmp" "$archive"
  echo "node image $name: $archive ($(stat -c %s "$archive") bytes)"
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if ! up_to_date "$out/pause.tar" "$here/pause/pause.c" "$0"; then
  mkdir -p "$work/pause"
  gcc -static -Os -s -o "$work/pause/pause" "$here/pause/pause.c"
  image "$out/pause.tar" registry.k8s.io/pause:3.10 "$work/pause" --entrypoint '["/pause"]'
fi

if ! up_to_date "$out/busybox.tar" /bin/busybox "$0"; then
  mkdir -p "$work/busybox/bin" "$work/busybox/tmp"
  chmod 1777 "$work/busybox/tmp"
  cp /bin/busybox "$work/busybox/bin/busybox"
  for applet in $("$work/busybox/bin/busybox" --list); do
    [[ "$applet" == busybox ]] || ln -s busybox "$work/busybox/bin/$applet"
  done
  image "$out/busybox.tar" docker.io/library/busybox:1.35 "$work/busybox" --cmd '["sh"]'
fi

if ! up_to_date "$out/proxy-waiter.tar" "$waiter" "$here/build.sh"; then
  "$here/build.sh" proxy-waiter "$waiter"
  cp "$root/target/images/proxy-waiter.tar" "$out/proxy-waiter.tar"
fi

argoexec="$root/target/tools/bin/argoexec"
if [[ ! -x "$argoexec" ]]; then
  echo "node image argoexec: skipped, $argoexec is not built (make tools)" >&2
elif ! up_to_date "$out/argoexec.tar" "$argoexec" "$0"; then
  version="$(awk '$1=="require" && $2=="github.com/argoproj/argo-workflows/v3" {print $3}' "$root/e2e/tools/argo/go.mod")"
  mkdir -p "$work/argoexec/bin" "$work/argoexec/tmp"
  chmod 1777 "$work/argoexec/tmp"
  cp "$argoexec" "$work/argoexec/bin/argoexec"
  image "$out/argoexec.tar" "quay.io/argoproj/argoexec:$version" "$work/argoexec" --entrypoint '["argoexec"]'
fi
