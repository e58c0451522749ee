#!/usr/bin/env bash
# Builds an OCI archive of one static binary, from scratch, running as a non-root user:
#   e2e/images/build.sh NAME BINARY   ->  target/images/NAME.tar
# buildah needs no daemon; vfs storage works on any filesystem.
set -euo pipefail
name="$1" binary="$2"
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="$root/target/images/$name.tar"
version="$(awk -F'"' '/^version *=/ {print $2; exit}' "$root/Cargo.toml")"
revision="$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
buildah=(buildah --storage-driver vfs)
mkdir -p "$(dirname "$out")"
container="$("${buildah[@]}" from scratch)"
trap '"${buildah[@]}" rm "$container" >/dev/null 2>&1 || true' EXIT
"${buildah[@]}" copy --chmod 0555 "$container" "$binary" "/$name" >/dev/null
"${buildah[@]}" config --user 65532:65532 --entrypoint "[\"/$name\"]" \
  --label "org.opencontainers.image.title=$name" \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.revision=$revision" \
  "$container"
source="$(git -C "$root" remote get-url origin 2>/dev/null || true)"
[[ -z "$source" ]] || "${buildah[@]}" config --label "org.opencontainers.image.source=$source" "$container"
rm -f "$out"
"${buildah[@]}" commit --quiet "$container" "oci-archive:$out:$name:$version" >/dev/null
echo "$name image: $out ($(stat -c %s "$out") bytes, binary $(stat -c %s "$binary") bytes)"
