#!/usr/bin/env bash
# Builds the pinned binaries of the k8s-local environment and the Pulumi Kubernetes
# provider plugin, idempotently:
#   - kube-apiserver, kube-controller-manager, kube-scheduler from k8s.io/kubernetes v1.37.2
#     (tools/k8s/kubernetes: every staging module replaced by its v0.37.2 release),
#   - kwok v0.7.0 (tools/k8s/kwok), which plays the kubelet of fake GPU nodes,
#   - pulumi-resource-kubernetes from the provider module at a pinned commit
#     (tools/k8s/provider), the only form of it the Go module proxy serves,
#   - etcd v3.5.21 (tools/k8s/etcd). Debian's etcd-server 3.4 serves the API server too, but
#     it lacks the watch progress requests that kube-apiserver 1.37 needs for streaming lists,
#     and kwok, which asks for them, then falls back to relists that take tens of seconds.
#   - kubelet and kube-proxy v1.37.2 for k8s-local's real node (tools/k8s/node: a wrapper module
#     of its own, since they need go.sum entries the control plane does not, and a separate step
#     and stamp, so adding them never rebuilds the control plane),
#   - CoreDNS v1.15.0 (tools/k8s/coredns), the real node's cluster DNS,
#   - pause (tools/k8s/pause, standard library only): the pod sandbox process of the real node,
#     since the usual pause image is on a registry this machine cannot reach,
#   - moto[server] 5.2.5 from PyPI in a virtualenv of its own: k8s-local's S3-compatible object
#     store (the Pulumi state backend the in-cluster scaler shares with the host). Its botocore
#     pins python-dateutil < 3 and the kubernetes client needs >= 3, so it cannot share .venv.
# Binaries go to ~/.cache/serveform/<name>-<version>/bin, keyed by version and by a hash of
# the wrapper module, so a second run takes well under a second. The provider is linked
# into .venv/bin, where the Pulumi CLI finds it on PATH as an ambient plugin.
#
# usage: tools/k8s/build.sh [all|kubernetes|node|coredns|pause|moto|kwok|provider|etcd|paths]
#   paths prints NAME=PATH lines for the built binaries (what tools/k8s-local.sh reads).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$ROOT/tools/k8s
CACHE=${SERVEFORM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/serveform}
K8S_VERSION=v1.37.2
KWOK_VERSION=v0.7.0
ETCD_VERSION=v3.5.21
COREDNS_VERSION=v1.15.0
PROVIDER_MODULE=github.com/pulumi/pulumi-kubernetes/provider/v4
PROVIDER_PSEUDO=v4.0.0-20260115033456-f47bc2d6f199
# The plugin reports the release line it was cut from; the commit is in the pseudo-version.
PROVIDER_VERSION=4.0.0-20260115033456-f47bc2d6f199

K8S_BIN=$CACHE/k8s-$K8S_VERSION/bin
NODE_BIN=$CACHE/k8s-node-$K8S_VERSION/bin
COREDNS_BIN=$CACHE/coredns-$COREDNS_VERSION/bin
PAUSE_BIN=$CACHE/pause/bin
MOTO_VERSION=5.2.5
MOTO_VENV=$CACHE/moto-$MOTO_VERSION/venv
KWOK_BIN=$CACHE/kwok-$KWOK_VERSION/bin
ETCD_BIN=$CACHE/etcd-$ETCD_VERSION/bin
PROVIDER_BIN=$CACHE/pulumi-kubernetes-$PROVIDER_PSEUDO/bin
VENV=$ROOT/.venv

log() { printf '[k8s-build] %s\n' "$*" >&2; }

export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
# The checksum database does not know this provider commit; its hashes are pinned in go.sum.
export GONOSUMDB=${GONOSUMDB:+$GONOSUMDB,}github.com/pulumi

# A stamp is the hash of the wrapper module and the recipe (bump "recipe N" when flags change).
stamp_of() { cat "$@" | sha256sum | cut -c1-12; }
fresh() { # fresh DIR STAMP BINARY... : all binaries exist and were built from STAMP
  local dir=$1 stamp=$2; shift 2
  [ "$(cat "$dir/.stamp" 2>/dev/null)" = "$stamp" ] || return 1
  local b
  for b in "$@"; do [ -x "$dir/$b" ] || return 1; done
}

k8s_version_ldflags() {
  # Without these the binaries report v0.0.0-master, and clients that gate features on the
  # server version (the Pulumi provider among them) misjudge the cluster.
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local pkg ld=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$ld"
}

build_kubernetes() {
  local stamp
  stamp=$(stamp_of "$HERE/kubernetes/go.mod" "$HERE/kubernetes/go.sum" <(echo "recipe 1"))
  if fresh "$K8S_BIN" "$stamp" kube-apiserver kube-controller-manager kube-scheduler; then return; fi
  log "building kube-apiserver, kube-controller-manager, kube-scheduler $K8S_VERSION (about 12 minutes cold)"
  mkdir -p "$K8S_BIN"
  local t0=$SECONDS ld
  ld=$(k8s_version_ldflags)
  local tmp
  tmp=$(mktemp -d "$K8S_BIN/.build.XXXXXX")
  (cd "$HERE/kubernetes" && go build -trimpath -ldflags "-s -w $ld" -o "$tmp/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler)
  mv "$tmp"/kube-* "$K8S_BIN/"
  rmdir "$tmp"
  echo "$stamp" > "$K8S_BIN/.stamp"
  log "kubernetes control plane built in $((SECONDS - t0)) s"
}

build_node() {
  local stamp
  stamp=$(stamp_of "$HERE/node/go.mod" "$HERE/node/go.sum" <(echo "recipe 1"))
  if fresh "$NODE_BIN" "$stamp" kubelet kube-proxy; then return; fi
  log "building kubelet, kube-proxy $K8S_VERSION (about 4 minutes cold after the control plane)"
  mkdir -p "$NODE_BIN"
  local t0=$SECONDS tmp
  tmp=$(mktemp -d "$NODE_BIN/.build.XXXXXX")
  # Same module versions and flags as the control plane: most packages come from Go's build cache.
  (cd "$HERE/node" && go build -trimpath -ldflags "-s -w $(k8s_version_ldflags)" -o "$tmp/" \
      k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy)
  mv "$tmp"/kube* "$NODE_BIN/"
  rmdir "$tmp"
  echo "$stamp" > "$NODE_BIN/.stamp"
  log "kubelet and kube-proxy built in $((SECONDS - t0)) s"
}

build_coredns() {
  local stamp
  stamp=$(stamp_of "$HERE/coredns/go.mod" "$HERE/coredns/go.sum" <(echo "recipe 1"))
  if fresh "$COREDNS_BIN" "$stamp" coredns; then return; fi
  log "building CoreDNS $COREDNS_VERSION (about 3 minutes cold)"
  mkdir -p "$COREDNS_BIN"
  local t0=$SECONDS
  (cd "$HERE/coredns" && go build -trimpath \
      -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" \
      -o "$COREDNS_BIN/coredns.tmp" github.com/coredns/coredns)
  mv "$COREDNS_BIN/coredns.tmp" "$COREDNS_BIN/coredns"
  echo "$stamp" > "$COREDNS_BIN/.stamp"
  log "CoreDNS built in $((SECONDS - t0)) s"
}

build_kwok() {
  local stamp
  stamp=$(stamp_of "$HERE/kwok/go.mod" "$HERE/kwok/go.sum" <(echo "recipe 1"))
  if fresh "$KWOK_BIN" "$stamp" kwok; then return; fi
  log "building kwok $KWOK_VERSION (about 2 minutes cold)"
  mkdir -p "$KWOK_BIN"
  local t0=$SECONDS
  (cd "$HERE/kwok" && go build -trimpath \
      -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" \
      -o "$KWOK_BIN/kwok.tmp" sigs.k8s.io/kwok/cmd/kwok)
  mv "$KWOK_BIN/kwok.tmp" "$KWOK_BIN/kwok"
  echo "$stamp" > "$KWOK_BIN/.stamp"
  log "kwok built in $((SECONDS - t0)) s"
}

build_provider() {
  local stamp
  stamp=$(stamp_of "$HERE/provider/go.mod" "$HERE/provider/go.sum" "$HERE/provider/main.go" <(echo "recipe 1 $PROVIDER_VERSION"))
  if ! fresh "$PROVIDER_BIN" "$stamp" pulumi-resource-kubernetes; then
    log "building pulumi-resource-kubernetes $PROVIDER_PSEUDO (about 10 minutes cold)"
    mkdir -p "$PROVIDER_BIN"
    local t0=$SECONDS src
    # Scratch copy of the wrapper: the provider's main embeds schema-embed.json and
    # terraform-mapping-embed.json, which its module zip ships under other names. They are
    # generated files of the provider, so they are copied from the module cache at build
    # time and never enter the repository.
    src=$(mktemp -d "$PROVIDER_BIN/.build.XXXXXX")
    cp "$HERE/provider/go.mod" "$HERE/provider/go.sum" "$HERE/provider/main.go" "$src/"
    local moddir
    moddir=$(cd "$src" && go mod download -json "$PROVIDER_MODULE@$PROVIDER_PSEUDO" \
      | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    [ -n "$moddir" ] || { log "could not locate $PROVIDER_MODULE@$PROVIDER_PSEUDO in the module cache"; exit 1; }
    install -m 0644 "$moddir/cmd/pulumi-resource-kubernetes/schema.json" "$src/schema-embed.json"
    install -m 0644 "$moddir/cmd/pulumi-resource-kubernetes/terraform-mapping.json" "$src/terraform-mapping-embed.json"
    (cd "$src" && go build -trimpath \
        -ldflags "-s -w -X $PROVIDER_MODULE/pkg/version.Version=$PROVIDER_VERSION" \
        -o "$PROVIDER_BIN/pulumi-resource-kubernetes.tmp" .)
    mv "$PROVIDER_BIN/pulumi-resource-kubernetes.tmp" "$PROVIDER_BIN/pulumi-resource-kubernetes"
    rm -rf "$src"
    echo "$stamp" > "$PROVIDER_BIN/.stamp"
    log "provider built in $((SECONDS - t0)) s"
  fi
  if [ -d "$VENV/bin" ]; then
    ln -sf "$PROVIDER_BIN/pulumi-resource-kubernetes" "$VENV/bin/pulumi-resource-kubernetes"
  fi
}

build_etcd() {
  local stamp
  stamp=$(stamp_of "$HERE/etcd/go.mod" "$HERE/etcd/go.sum" "$HERE/etcd/main.go" <(echo "recipe 1"))
  if fresh "$ETCD_BIN" "$stamp" etcd; then return; fi
  log "building etcd $ETCD_VERSION (about 2 minutes cold)"
  mkdir -p "$ETCD_BIN"
  local t0=$SECONDS
  (cd "$HERE/etcd" && go build -trimpath -ldflags "-s -w" -o "$ETCD_BIN/etcd.tmp" .)
  mv "$ETCD_BIN/etcd.tmp" "$ETCD_BIN/etcd"
  echo "$stamp" > "$ETCD_BIN/.stamp"
  log "etcd built in $((SECONDS - t0)) s"
}

build_pause() {
  local stamp
  stamp=$(stamp_of "$HERE/pause/go.mod" "$HERE/pause/main.go" <(echo "recipe 1"))
  if fresh "$PAUSE_BIN" "$stamp" pause; then return; fi
  mkdir -p "$PAUSE_BIN"
  # Static: it runs alone in an image with nothing else in it.
  (cd "$HERE/pause" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$PAUSE_BIN/pause.tmp" .)
  mv "$PAUSE_BIN/pause.tmp" "$PAUSE_BIN/pause"
  echo "$stamp" > "$PAUSE_BIN/.stamp"
}

build_moto() {
  local stamp
  stamp=$(echo "moto[server]==$MOTO_VERSION recipe 1" | sha256sum | cut -c1-12)
  if [ "$(cat "$MOTO_VENV/.stamp" 2>/dev/null)" = "$stamp" ] && [ -x "$MOTO_VENV/bin/moto_server" ]; then return; fi
  log "installing moto[server] $MOTO_VERSION (PyPI) into $MOTO_VENV"
  rm -rf "$MOTO_VENV"
  "${PYTHON:-python3}" -m venv "$MOTO_VENV"
  "$MOTO_VENV/bin/python" -m pip install -q "moto[server]==$MOTO_VERSION"
  echo "$stamp" > "$MOTO_VENV/.stamp"
}

paths() {
  echo "ETCD=$ETCD_BIN/etcd"
  echo "KUBE_APISERVER=$K8S_BIN/kube-apiserver"
  echo "KUBE_CONTROLLER_MANAGER=$K8S_BIN/kube-controller-manager"
  echo "KUBE_SCHEDULER=$K8S_BIN/kube-scheduler"
  echo "KUBELET=$NODE_BIN/kubelet"
  echo "KUBE_PROXY=$NODE_BIN/kube-proxy"
  echo "COREDNS=$COREDNS_BIN/coredns"
  echo "PAUSE=$PAUSE_BIN/pause"
  echo "MOTO_SERVER=$MOTO_VENV/bin/moto_server"
  echo "KWOK=$KWOK_BIN/kwok"
  echo "PULUMI_RESOURCE_KUBERNETES=$PROVIDER_BIN/pulumi-resource-kubernetes"
}

with_lock() {
  mkdir -p "$CACHE"
  # Concurrent test sessions and tools/setup.sh may call this at once: one builder at a time.
  exec 8>"$CACHE/.k8s-build.lock"
  flock 8
  "$@"
}

case "${1:-all}" in
  kubernetes) with_lock build_kubernetes ;;
  kwok) with_lock build_kwok ;;
  provider) with_lock build_provider ;;
  etcd) with_lock build_etcd ;;
  node) with_lock build_node ;;
  coredns) with_lock build_coredns ;;
  pause) with_lock build_pause ;;
  moto) with_lock build_moto ;;
  paths) paths ;;
  all)
    with_lock build_etcd
    build_provider
    build_kwok
    build_kubernetes
    # After the control plane: the kubelet shares most of its packages through Go's build cache.
    build_node
    build_coredns
    build_pause
    build_moto
    ;;
  *) echo "usage: $0 [all|kubernetes|node|coredns|pause|moto|kwok|provider|etcd|paths]" >&2; exit 2 ;;
esac
