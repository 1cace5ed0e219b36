# Makes sure debian:<release>-slim is on the Docker host, for the images built
# FROM it (scripts/worker-image, scripts/server-image). Sourced, after
# scripts/versions.sh; call `ensure_debian_base`.
#
# Pulled where a registry answers. Where none does, it is made here from
# Debian's own packages: debootstrap a minimal root filesystem (cached in
# $VIBERGLASS_DOCKER_CACHE, default /var/tmp/viberglass-docker, outside the
# checkout) and `docker import` it under that name.

ensure_debian_base() {
  local base="debian:${DEBIAN_RELEASE}-slim"
  local cache="${VIBERGLASS_DOCKER_CACHE:-/var/tmp/viberglass-docker}"
  if docker image inspect "$base" >/dev/null 2>&1 || docker pull -q "$base" >/dev/null 2>&1; then
    return 0
  fi
  local rootfs_tar="$cache/rootfs-$DEBIAN_RELEASE.tar"
  # The cached base becomes every image's root: only ours, never one another user planted.
  mkdir -p "$cache"
  if [ "$(stat -c %u "$cache")" != "$(id -u)" ]; then
    echo "$cache belongs to another user: remove it, or set VIBERGLASS_DOCKER_CACHE" >&2
    return 1
  fi
  chmod go-w "$cache"
  if [ ! -s "$rootfs_tar" ]; then
    command -v debootstrap >/dev/null 2>&1 || {
      [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || {
        echo "$base cannot be pulled and debootstrap is missing: install debootstrap" >&2; return 1; }
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    }
    printf '\n== %s\n' "making $base from Debian's packages (debootstrap, cached in $cache)"
    local rootfs="$cache/rootfs-$DEBIAN_RELEASE"
    rm -rf "$rootfs"
    # Every package checked against Debian's archive key: this becomes the root of the images.
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    if [ ! -f "$keyring" ]; then
      [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || {
        echo "$keyring is missing: install debian-archive-keyring" >&2; return 1; }
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debian-archive-keyring >/dev/null
    fi
    debootstrap --force-check-gpg --keyring="$keyring" --variant=minbase "$DEBIAN_RELEASE" "$rootfs" http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1 \
      || { tail -n 20 "$cache/debootstrap.log" >&2; return 1; }
    # What the slim image leaves out: package lists and caches.
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
    tar -C "$rootfs" -cf "$rootfs_tar.partial" . && mv "$rootfs_tar.partial" "$rootfs_tar"
    rm -rf "$rootfs"
  fi
  printf '\n== %s\n' "importing $base"
  docker import "$rootfs_tar" "$base" >/dev/null
}
