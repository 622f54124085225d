#!/usr/bin/env bash
# What the VM boot tests (tests/boot/) need on this machine, idempotently:
#   - Debian packages: systemd-container (systemd-nspawn), debootstrap, iproute2, iptables;
#   - a Debian bookworm root with systemd and cloud-init, the stand-in for a cloud VM's image,
#     built once by debootstrap from the mirror apt uses and cached in
#     ~/.cache/serveform/vmboot/root-<key>/ (key: suite, mirror, package list, recipe), read-only
#     afterwards: each test boots an overlay of it;
#   - moto[server] (tools/k8s/build.sh moto): the AWS API stand-in.
# Prints KEY=VALUE lines (ROOT=, REPLICA_ROOT=, REGISTRY=, MOTO_SERVER=) for the test fixture.
# usage: tools/vmboot/setup.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${SERVEFORM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/serveform}
SUITE=bookworm
RECIPE=2
# A gateway VM's image: Debian 12 as the cloud publishes it has systemd, cloud-init, python3 and
# (here pre-installed, since the boot container has no route to a mirror) python3-venv, which the
# user data asks for. iproute2 for the test's own address setup; locales and python3-cffi-backend
# keep cloud-init quiet (FACTS.md).
PACKAGES=systemd,systemd-sysv,dbus,cloud-init,python3,python3-venv,python3-cffi-backend,locales,iproute2,ca-certificates,sudo
T0=$SECONDS
log() { printf '[vmboot %3ds] %s\n' "$((SECONDS - T0))" "$*" >&2; }

mkdir -p "$CACHE/vmboot"
exec 9>"$CACHE/vmboot/.lock"
flock 9

need=()
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v ip >/dev/null || need+=(iproute2)
command -v iptables >/dev/null || need+=(iptables)
if [ ${#need[@]} -gt 0 ]; then
  log "apt-get install ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null 2>&1 || {
    apt-get update -q >/dev/null 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
  }
fi

MIRROR=$("$ROOT/.venv/bin/python" -c 'from serveform.image.build import debian_mirror; print(debian_mirror())')
KEY=$(printf '%s\n' "$RECIPE" "$SUITE" "$MIRROR" "$PACKAGES" | sha256sum | cut -c1-12)
DEST=$CACHE/vmboot/root-$KEY
if [ ! -f "$DEST/.complete" ]; then
  log "debootstrap $SUITE with systemd and cloud-init into $DEST (about 2 minutes, once)"
  rm -rf "$DEST.tmp"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$DEST.tmp" "$MIRROR" >"$CACHE/vmboot/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/vmboot/debootstrap.log" >&2; exit 1; }
  # The image's own settings, as a cloud image has them: NoCloud first (the test's seed), no
  # network configuration from cloud-init (nspawn's veth is configured by the test), no apt
  # mirror (nothing is fetched at boot; `apt-get update` reads an empty local source).
  printf 'datasource_list: [ NoCloud, None ]\nnetwork: {config: disabled}\n' > "$DEST.tmp/etc/cloud/cloud.cfg.d/90-serveform-test.cfg"
  mkdir -p "$DEST.tmp/var/lib/serveform-local-apt"
  : > "$DEST.tmp/var/lib/serveform-local-apt/Packages"
  echo 'deb [trusted=yes] file:/var/lib/serveform-local-apt ./' > "$DEST.tmp/etc/apt/sources.list"
  rm -f "$DEST.tmp/etc/apt/sources.list.d/"*
  rm -rf "$DEST.tmp/var/lib/apt/lists/"* "$DEST.tmp/var/cache/apt/"*.bin
  echo "serveform-vm" > "$DEST.tmp/etc/hostname"
  # en_US.UTF-8 generated, as in Debian's cloud images (cloud-init's locale module sets it).
  sed -i 's/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/' "$DEST.tmp/etc/locale.gen"
  chroot "$DEST.tmp" locale-gen >/dev/null
  chroot "$DEST.tmp" update-locale LANG=en_US.UTF-8
  # No getty on the console: the test reads the console pipe (cloud-init's and serveform's lines).
  rm -f "$DEST.tmp/etc/systemd/system/getty.target.wants/"*
  touch "$DEST.tmp/.complete"
  mv "$DEST.tmp" "$DEST"
  log "root ready"
fi
# A replica VM's image: the base root plus what the GPU image brings (a container engine with a
# docker CLI, awscli for the secrets and volumes steps). Debian's podman with podman-docker stands
# in for Docker (nested in systemd-nspawn it runs with crun and no cgroups; the test configures
# that in its overlay), awscli is Debian's.
REPLICA_PACKAGES="podman podman-docker crun uidmap awscli"
RKEY=$(printf '%s\n' "$KEY" "$REPLICA_PACKAGES" | sha256sum | cut -c1-12)
RDEST=$CACHE/vmboot/replica-$RKEY
if [ ! -f "$RDEST/.complete" ]; then
  log "replica root: $REPLICA_PACKAGES into $RDEST (about 1 minute, once)"
  rm -rf "$RDEST.tmp"
  cp -a "$DEST" "$RDEST.tmp"
  rm -f "$RDEST.tmp/.complete"
  cp "$RDEST.tmp/etc/apt/sources.list" "$RDEST.tmp/etc/apt/sources.list.offline"
  echo "deb $MIRROR $SUITE main" > "$RDEST.tmp/etc/apt/sources.list"
  cp /etc/resolv.conf "$RDEST.tmp/etc/resolv.conf"
  chroot "$RDEST.tmp" sh -c "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $REPLICA_PACKAGES" \
    >"$CACHE/vmboot/replica-apt.log" 2>&1 || { tail -20 "$CACHE/vmboot/replica-apt.log" >&2; exit 1; }
  mv "$RDEST.tmp/etc/apt/sources.list.offline" "$RDEST.tmp/etc/apt/sources.list"
  rm -f "$RDEST.tmp/etc/resolv.conf"  # this machine's resolver, for apt only
  rm -rf "$RDEST.tmp/var/lib/apt/lists/"* "$RDEST.tmp/var/cache/apt/archives/"*.deb
  echo "serveform-replica" > "$RDEST.tmp/etc/hostname"
  touch "$RDEST.tmp/.complete"
  mv "$RDEST.tmp" "$RDEST"
fi
# An OCI registry (go-containerregistry's, from the Go module proxy; it keeps blobs in memory):
# the registry the replica test's stack names for the runtime image (as ECR would be), which the
# replica VM pulls from by digest. skopeo pushes the image's OCI archive into it.
REGISTRY_VERSION=v0.20.2
REGISTRY_BIN=$CACHE/registry-$REGISTRY_VERSION/bin
if [ ! -x "$REGISTRY_BIN/registry" ]; then
  log "registry: go install github.com/google/go-containerregistry/cmd/registry@$REGISTRY_VERSION"
  mkdir -p "$REGISTRY_BIN"
  GOBIN=$REGISTRY_BIN GOFLAGS=-buildvcs=false go install "github.com/google/go-containerregistry/cmd/registry@$REGISTRY_VERSION" >&2
fi
if ! command -v skopeo >/dev/null; then
  log "apt-get install skopeo"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q skopeo >/dev/null 2>&1 || {
    apt-get update -q >/dev/null 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q skopeo >/dev/null
  }
fi
MOTO=$("$ROOT/tools/k8s/build.sh" paths | sed -n 's/^MOTO_SERVER=//p')
"$ROOT/tools/k8s/build.sh" moto >&2
echo "ROOT=$DEST"
echo "REPLICA_ROOT=$RDEST"
echo "REGISTRY=$REGISTRY_BIN/registry"
echo "MOTO_SERVER=$MOTO"
