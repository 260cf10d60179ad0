#!/usr/bin/env bash
# Build the offline test image shoal/busybox:latest with `docker import`.
#
# The rootfs is Debian's statically linked busybox (package busybox-static)
# plus one symlink per applet (sh, ping, httpd, nc, sleep, hostname, wget, …).
# Nothing is pulled from a registry. Re-running is cheap: the image is rebuilt
# only when the busybox binary changed (or with --force).
#
# usage: deploy/build-image.sh [--force]
#   IMAGE=name:tag   image to build   (default shoal/busybox:latest)
#   BUSYBOX=path     static busybox   (default /bin/busybox)
set -euo pipefail

IMAGE=${IMAGE:-shoal/busybox:latest}
BUSYBOX=${BUSYBOX:-/bin/busybox}
force=0
case "${1:-}" in
  --force) force=1 ;;
  "") ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

die() { echo "build-image: $*" >&2; exit 1; }

command -v docker >/dev/null || die "docker not found (run deploy/install-deps.sh)"
docker info >/dev/null 2>&1 || die "cannot reach the Docker daemon (is dockerd running?)"
[ -x "$BUSYBOX" ] || die "$BUSYBOX not found: apt-get install busybox-static"
# A dynamically linked busybox (package `busybox`) would not run in an empty rootfs.
if ldd "$BUSYBOX" >/dev/null 2>&1; then
  die "$BUSYBOX is dynamically linked: apt-get install busybox-static"
fi

sum=$(sha256sum "$BUSYBOX" | cut -d' ' -f1)
# The label is inherited by every container of the image: keep it out of shoal.*.
label=org.shoal-test.busybox-sha256
old_id=$(docker image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
if [ -n "$old_id" ] && [ "$force" = 0 ]; then
  have=$(docker image inspect --format "{{index .Config.Labels \"$label\"}}" "$IMAGE" 2>/dev/null || true)
  if [ "$have" = "$sum" ]; then
    echo "$IMAGE is up to date"
    exit 0
  fi
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

mkdir -p "$root"/{bin,etc,proc,sys,dev,root,tmp,var/tmp,var/log,usr}
chmod 1777 "$root/tmp" "$root/var/tmp"
ln -s ../bin "$root/usr/bin"
ln -s ../bin "$root/usr/sbin"
ln -s bin "$root/sbin"
cp "$BUSYBOX" "$root/bin/busybox"
chmod 0755 "$root/bin/busybox"
for applet in $("$BUSYBOX" --list); do
  [ "$applet" = busybox ] && continue
  ln -s busybox "$root/bin/$applet"
done
# `busybox --list` always has these, but the demos depend on them: make sure.
for applet in sh ping httpd nc sleep hostname cat echo ls wget; do
  [ -e "$root/bin/$applet" ] || die "busybox at $BUSYBOX has no '$applet' applet"
done
cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
echo 'hosts: files dns' >"$root/etc/nsswitch.conf"

tar --numeric-owner --owner=0 --group=0 -C "$root" -cf - . |
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["sh"]' \
    --change "LABEL $label=$sum" \
    --message "shoal test image: busybox-static rootfs" \
    - "$IMAGE" >/dev/null

new_id=$(docker image inspect --format '{{.Id}}' "$IMAGE")
# The previous build is now untagged; drop it unless a container still uses it.
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
  docker image rm "$old_id" >/dev/null 2>&1 || true
fi
echo "built $IMAGE ($new_id)"
