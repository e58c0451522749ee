#!/usr/bin/env bash
# Builds the images every real node of the test bed imports, as OCI archives in
# target/images/node/ (no registry can be reached here, so nothing is ever pulled):
#   e2e/images/node-images.sh PROXY_WAITER_BINARY
# - pause.tar: registry.k8s.io/pause:3.10, the sandbox image (pause/pause.c, gcc -static);
# - busybox.tar: docker.io/library/busybox:1.35, Debian's busybox-static (1.35) with its
#   applets (not `latest`, which Kubernetes always pulls);
# - proxy-waiter.tar: the product image, exactly as `make images` builds it;
# - argoexec.tar, argoexec4.tar: quay.io/argoproj/argoexec at the versions of e2e/tools/argo
#   and e2e/tools/argo4, Argo's executor as `make tools` builds it (static), so step pods on
#   real nodes run the real one.
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

# argoexec_image SUFFIX TOOLS_MODULE: Argo's executor as `make tools` built it (argoexec or
# argoexec4), named as its controller names it in step pods.
argoexec_image() {
  local suffix="$1" module="$2" binary="$root/target/tools/bin/argoexec$1" archive="$out/argoexec$1.tar" version dir
  if [[ ! -x "$binary" ]]; then
    echo "node image argoexec$suffix: skipped, $binary is not built (make tools)" >&2
    return
  fi
  up_to_date "$archive" "$binary" "$0" && return
  version="$(awk -v m="$module" '$1=="require" && $2==m {print $3}' "$root/e2e/tools/argo$suffix/go.mod")"
  [[ -n "$version" ]] || { echo "node image argoexec$suffix: no version of $module in e2e/tools/argo$suffix/go.mod" >&2; exit 1; }
  dir="$work/argoexec$suffix"
  mkdir -p "$dir/bin" "$dir/tmp"
  chmod 1777 "$dir/tmp"
  cp "$binary" "$dir/bin/argoexec"
  image "$archive" "quay.io/argoproj/argoexec:$version" "$dir" --entrypoint '["argoexec"]'
}
argoexec_image "" github.com/argoproj/argo-workflows/v3
argoexec_image 4 github.com/argoproj/argo-workflows/v4
