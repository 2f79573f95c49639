#!/usr/bin/env bash
# Starts a container engine that speaks the Docker Engine API on this machine, for the
# docker backend's tests: podman's API service with the settings found to work here (see
# DESIGN.md section 8): runc, explicit ulimits, storage in a directory of our own, and local
# images made from busybox-static (no registry is reachable).
#
# Usage: podman.sh STATE_DIR   -> prints the socket URL (unix://...) once the API answers.
# Installs podman, runc and busybox-static with apt-get when they are missing (needs root).
# The service exits by itself after 10 minutes without requests.
set -euo pipefail

state="${1:?usage: podman.sh STATE_DIR}"
mkdir -p "$state"
state="$(cd "$state" && pwd)"
sock="$state/podman.sock"

need=()
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
[ -x /bin/busybox ] && /bin/busybox --list >/dev/null 2>&1 || need+=(busybox-static)
if [ "${#need[@]}" -gt 0 ]; then
    echo "installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

cat > "$state/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
CONF
cat > "$state/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$state/graph"
runroot = "$state/run"
CONF
export CONTAINERS_CONF="$state/containers.conf"
export CONTAINERS_STORAGE_CONF="$state/storage.conf"

api_up() {
    curl -sf --unix-socket "$sock" http://d/v1.41/version >/dev/null 2>&1
}

if ! api_up; then
    rm -f "$sock"
    nohup podman system service --time=600 "unix://$sock" > "$state/service.log" 2>&1 &
    for _ in $(seq 1 100); do
        api_up && break
        sleep 0.1
    done
    api_up || { echo "the podman API service did not start; its log:" >&2; cat "$state/service.log" >&2; exit 1; }
fi

# Local images: busybox with its applets, one per tag the docker backend may select, each
# knowing its own name in /etc/image-name (so that tests can tell which one ran).
make_image() {
    local tag="$1" rootfs="$state/rootfs-${1//[:\/]/-}"
    podman image exists "$tag" && return 0
    rm -rf "$rootfs"
    mkdir -p "$rootfs/bin" "$rootfs/tmp" "$rootfs/home/travis" "$rootfs/sbin" "$rootfs/proc" \
        "$rootfs/sys" "$rootfs/dev" "$rootfs/etc" "$rootfs/root"
    cp /bin/busybox "$rootfs/bin/busybox"
    for applet in $(/bin/busybox --list); do
        [ -e "$rootfs/bin/$applet" ] || ln -s busybox "$rootfs/bin/$applet"
    done
    # CMD "/sbin/init" keeps the container alive: busybox's init with an empty inittab
    # would respawn shells, so init is a shell that sleeps.
    # It is PID 1, which ignores signals it has no handler for: so it handles SIGTERM.
    printf '#!/bin/sh\ntrap "exit 0" TERM\nwhile :; do sleep 1; done\n' > "$rootfs/sbin/init"
    chmod 755 "$rootfs/sbin/init"
    # bash for EXEC_CMD "bash /home/travis/build.sh": busybox's sh under that name.
    printf '#!/bin/sh\nexec /bin/sh "$@"\n' > "$rootfs/bin/bash"
    chmod 755 "$rootfs/bin/bash"
    echo "root:x:0:0:root:/root:/bin/sh" > "$rootfs/etc/passwd"
    echo "$tag" > "$rootfs/etc/image-name"
    tar -C "$rootfs" -cf "$rootfs.tar" .
    podman import -q "$rootfs.tar" "$tag" >/dev/null
    rm -rf "$rootfs" "$rootfs.tar"
}
for tag in travis:default travis:go ruby:latest; do
    make_image "$tag"
done

echo "unix://$sock"
