#!/usr/bin/env bash
# Lays out the image's root filesystem from release binaries, so the offline build
# (docker/build-offline.sh) and the registry build (Dockerfile) give the same image:
#
#   /usr/local/bin/chat*      every binary of the workspace (debug info stripped)
#   /lib*, /usr/lib*          the shared libraries they load (ldd), and glibc's NSS
#                             modules, so getaddrinfo resolves `broker`, `server-2`
#   /etc/passwd, group        root and the user `chat` (10001) the services run as
#   /etc/nsswitch.conf        hosts: files dns (Docker mounts /etc/hosts, resolv.conf)
#   /tmp                      1777
#
# and beside it an empty `data` directory, which the Dockerfiles copy to /data owned by
# `chat` (the mount point of the named volumes, whose first mount copies that owner).
#
# Usage: docker/make-rootfs.sh RELEASE_DIR STAGE_DIR   (writes STAGE_DIR/rootfs, STAGE_DIR/data)
set -euo pipefail

BINS=(chat chat-broker chat-proxy chat-reference chat-server chat-client chat-bot chat-bench chat-web chat-sim)
CHAT_UID=10001

if [ $# -ne 2 ]; then
  echo "usage: $0 RELEASE_DIR STAGE_DIR" >&2
  exit 2
fi
release=$1
stage=$2
out=$stage/rootfs

for b in "${BINS[@]}"; do
  if [ ! -x "$release/$b" ]; then
    echo "$release/$b is missing: build the workspace first (cargo build --release -p bins)" >&2
    exit 1
  fi
done

rm -rf "$out" "$stage/data"
mkdir -p "$out/usr/local/bin" "$out/etc" "$out/tmp" "$stage/data"
chmod 1777 "$out/tmp"

for b in "${BINS[@]}"; do
  cp "$release/$b" "$out/usr/local/bin/$b"
  if command -v strip >/dev/null 2>&1; then
    strip --strip-debug "$out/usr/local/bin/$b"
  fi
done

# Copies a library to the same path in the image, as a plain file (symlinks followed).
copy_lib() {
  local path=$1
  [ -e "$path" ] || return 0
  mkdir -p "$out$(dirname "$path")"
  cp -L "$path" "$out$path"
}

# Every library any binary loads, and the dynamic loader itself.
libs=$(for b in "${BINS[@]}"; do ldd "$release/$b"; done \
  | awk '/=> \// { print $3 } /^[[:space:]]*\/[^ ]+ \(/ { print $1 }' | sort -u)
for lib in $libs; do
  copy_lib "$lib"
done

# Name resolution: glibc loads NSS modules with dlopen (ldd does not show them). Since
# glibc 2.34 files and dns are built into libc.so.6; older ones need these files.
libc_dir=$(dirname "$(echo "$libs" | grep -m1 '/libc\.so\.6$')")
for lib in "$libc_dir"/libnss_files.so.2 "$libc_dir"/libnss_dns.so.2 "$libc_dir"/libresolv.so.2; do
  copy_lib "$lib"
done

cat > "$out/etc/passwd" <<PASSWD
root:x:0:0:root:/root:/sbin/nologin
chat:x:$CHAT_UID:$CHAT_UID:chat:/data:/sbin/nologin
PASSWD
cat > "$out/etc/group" <<GROUP
root:x:0:
chat:x:$CHAT_UID:
GROUP
cat > "$out/etc/nsswitch.conf" <<NSS
passwd: files
group: files
hosts: files dns
NSS

echo "rootfs in $out: $(du -sh "$out" | cut -f1)"
