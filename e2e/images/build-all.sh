#!/usr/bin/env bash
# Builds the four images as OCI archives under target/images/ (buildah, no daemon):
#   e2e/images/build-all.sh [PROXY_WAITER_BINARY]
# webhook, delegate-sync and certs are built here as static release binaries (glibc linked
# statically); proxy-waiter is the binary `make waiter` builds (its own size-optimised
# profile), given as the argument or found at its default path. Every binary is checked to be
# static and to run `--version` with no environment and no files around it (as in a `FROM
# scratch` image) before it is packaged; a table of sizes ends the output.
# Needs Rust's x86_64-unknown-linux-gnu target, glibc's static libraries (libc6-dev), buildah.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
triple=x86_64-unknown-linux-gnu
release="target/$triple/release"
waiter="${1:-target/$triple/waiter/proxy-waiter}"
cargo="${CARGO:-cargo}"

[[ -x "$waiter" ]] || { echo "no proxy-waiter at $waiter: run \`make waiter\` first" >&2; exit 1; }
command -v buildah >/dev/null || { echo "buildah is missing: run \`make packages\`" >&2; exit 1; }

echo "building static release binaries of webhook, delegate-sync and certs ..."
CARGO_PROFILE_RELEASE_STRIP=symbols RUSTFLAGS="-C target-feature=+crt-static" "$cargo" build --quiet --release --locked \
  --target "$triple" -p webhook -p delegate-sync -p certs --bins

# An empty directory to run each binary in, when chroot is available (root): no /etc, /lib,
# /proc or /dev, like the image. Otherwise only an empty environment.
jail=""
if [[ "$(id -u)" == 0 ]] && chroot / true 2>/dev/null; then
  jail="$(mktemp -d)" chroot="$(command -v chroot)"
  trap 'rm -rf "$jail"' EXIT
fi

check() {
  local name="$1" binary="$2" kind out
  kind="$(file -b "$binary")"
  [[ "$kind" == *"statically linked"* || "$kind" == *"static-pie linked"* ]] \
    || { echo "$binary is not static: $kind" >&2; exit 1; }
  if out="$(ldd "$binary" 2>&1)"; then
    [[ "$out" == *"not a dynamic executable"* || "$out" == *"statically linked"* ]] \
      || { echo "$binary has dynamic dependencies:" >&2; echo "$out" >&2; exit 1; }
  fi
  if [[ -n "$jail" ]]; then
    cp "$binary" "$jail/$name"
    out="$(env -i "$chroot" "$jail" "/$name" --version 2>&1)" \
      || { echo "$name --version failed in an empty root: $out" >&2; exit 1; }
    rm -f "$jail/$name"
  else
    out="$(env -i "$binary" --version 2>&1)" \
      || { echo "$name --version failed in an empty environment: $out" >&2; exit 1; }
  fi
  echo "$name: static, \`--version\` in an empty ${jail:+root and }environment: $out"
}

names=(webhook delegate-sync certs proxy-waiter)
binaries=("$release/webhook" "$release/delegate-sync" "$release/certs" "$waiter")
for i in "${!names[@]}"; do
  check "${names[$i]}" "${binaries[$i]}"
done
for i in "${!names[@]}"; do
  e2e/images/build.sh "${names[$i]}" "${binaries[$i]}" >/dev/null
done

# Archives hold uncompressed layers; "gzip" is about what a registry stores and nodes pull.
mib() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1048576 }'; }
echo
printf '| %-13s | %12s | %13s | %10s | %s |\n' image "binary (MiB)" "archive (MiB)" "gzip (MiB)" archive
printf '|%s|%s|%s|%s|%s|\n' "---------------" "-------------:" "--------------:" "-----------:" "---"
for i in "${!names[@]}"; do
  archive="target/images/${names[$i]}.tar"
  printf '| %-13s | %12s | %13s | %10s | %s |\n' "${names[$i]}" \
    "$(mib "$(stat -c %s "${binaries[$i]}")")" "$(mib "$(stat -c %s "$archive")")" \
    "$(mib "$(gzip -c "$archive" | wc -c)")" "$archive"
done
