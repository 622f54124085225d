#!/usr/bin/env bash
# Installs the Debian packages a real k8s-local node and `make image` need, idempotently:
#   containerd, runc, containernetworking-plugins  the node's container runtime and pod network
#                                                  (bridge, host-local, loopback, portmap)
#   iptables, conntrack                            kube-proxy's Service rules
#   debootstrap                                    the runtime image's Debian root (tools/image/build.py)
#   skopeo                                         `serveform image push`: copies the OCI archive to a registry
# Only missing packages are installed; `apt-get update` runs only when one is missing, so a second
# call costs a dpkg query. Needs root (apt-get), as everything that runs a real node does.
#
# usage: tools/k8s/host-packages.sh [node|image|all]
set -euo pipefail

NODE_PACKAGES=(containerd runc containernetworking-plugins iptables conntrack)
IMAGE_PACKAGES=(debootstrap skopeo)

log() { printf '[host-packages] %s\n' "$*" >&2; }

missing() { # missing PKG...: print the packages dpkg does not list as installed
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || echo "$p"
  done
}

install() {
  local want
  mapfile -t want < <(missing "$@")
  [ ${#want[@]} -gt 0 ] || return 0
  [ "$(id -u)" = 0 ] || { log "error: ${want[*]} missing and only root can apt-get install them"; exit 1; }
  log "installing ${want[*]} (apt-get)"
  local t0=$SECONDS
  # Other sessions may hold the dpkg lock: wait for it rather than fail.
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${want[@]}" >/dev/null
  log "installed in $((SECONDS - t0)) s"
}

case "${1:-all}" in
  node) install "${NODE_PACKAGES[@]}" ;;
  image) install "${IMAGE_PACKAGES[@]}" ;;
  all) install "${NODE_PACKAGES[@]}" "${IMAGE_PACKAGES[@]}" ;;
  *) echo "usage: $0 [node|image|all]" >&2; exit 2 ;;
esac
