#!/usr/bin/env bash
# The real node of k8s-local: containerd + runc, kubelet, kube-proxy and CoreDNS in a network
# namespace of their own, next to kwok's simulated GPU nodes. Called by tools/k8s-local.sh:
#
#   node.sh net-up DIR        create the node's network (prints NODE_* lines for ports.env)
#   node.sh start DIR         start containerd, import the images, start kubelet, kube-proxy,
#                             CoreDNS (needs the API server, DIR/kubeconfig and DIR/pki)
#   node.sh images DIR        import the checkout's current runtime image into the running node
#   node.sh stop DIR          stop everything the node started and remove its network: no
#                             process, mount, network namespace, veth or cgroup is left
#   node.sh resources DIR     print what stop removes (tests compare it before and after)
#
# Layout. The node lives in the network namespace `sf-<id>` (id: a hash of DIR, so clusters in
# other directories coexist), reached from the host through a veth pair on 10.249.<n>.0/30
# (host .1, node .2). Its pods get 10.250.<n>.0/24 on the bridge cni0 inside that namespace
# (bridge + host-local CNI), routed from the host through the veth. kube-proxy's iptables rules
# live in the node's namespace, so the host's tables are never touched and deleting the
# namespace takes them away. The daemons also share a private mount namespace (held by a
# `sleep` process): container root filesystems, pod volumes and network-namespace mounts are
# made there and vanish with it. Pod cgroups go under /serveform-<id> in every hierarchy.
#
# Images are never pulled: the runtime image (`serveform image build`) and the pause image the
# project builds are imported into containerd, and images are kept from garbage collection.
# Needs root.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CMD=${1:-}
DIR=${2:?usage: node.sh net-up|start|stop|resources DIR}
NODE_DIR=$DIR/node
PY=${PYTHON:-$ROOT/.venv/bin/python}
NODE_NAME=k8s-local-node
CLUSTER_DOMAIN=cluster.local
SERVICE_CIDR=10.96.0.0/16
READY_TIMEOUT_SECONDS=${K8S_LOCAL_READY_TIMEOUT_SECONDS:-120}
STOP_TIMEOUT_SECONDS=15
# Pods of the real node ask for their CPU and memory against this capacity (the chat example
# asks for 1 CPU per replica, the gateway and scaler 100m).
ID=$(printf '%s' "$(cd "$DIR" 2>/dev/null && pwd || echo "$DIR")" | sha256sum | cut -c1-8)
NETNS=sf-$ID
HOST_IF=sf${ID}h
NODE_IF=sf${ID}n
CGROUP_ROOT=/serveform-$ID
# containerd's sockets and state (its shims' sockets too, under /run/containerd/s) and the
# kubelet's directory (its sockets, pod volumes): tmpfs mounted at the usual places in the node's
# private mount namespace, so clusters do not share them, socket paths stay short (a kubelet
# under a deep test directory cannot bind its sockets), and nothing of them outlives the node.
RUN_DIR=/run/containerd
KUBELET_DIR=/var/lib/kubelet
DAEMONS=(coredns kube-proxy kubelet containerd)

log() { printf '[k8s-local node] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

running() { kill -0 "$1" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
pid_of() { cat "$NODE_DIR/pids/$1.pid" 2>/dev/null; }

load_net() {
  [ -f "$NODE_DIR/net.env" ] || return 1
  # shellcheck disable=SC1091
  . "$NODE_DIR/net.env"
}

subnet_free() { # subnet_free N: no address or route of the host uses 10.249.N.0 or 10.250.N.0
  ! ip -4 route show | grep -qE "^10\.(249|250)\.$1\." && ! ip -4 addr show | grep -qE "inet 10\.(249|250)\.$1\."
}

net_up() {
  [ "$(id -u)" = 0 ] || die "the real node needs root (network namespaces, containerd); K8S_LOCAL_REAL_NODE=0 runs without it"
  mkdir -p "$NODE_DIR/pids" "$NODE_DIR/logs"
  net_down
  local n=$((16#${ID:0:2})) tries=0
  until subnet_free "$n"; do
    n=$(((n + 1) % 256)); tries=$((tries + 1))
    [ $tries -lt 256 ] || die "no free 10.249.N.0/30 + 10.250.N.0/24 pair for the node's network"
  done
  local host_ip=10.249.$n.1 node_ip=10.249.$n.2 pod_cidr=10.250.$n.0/24 dns_ip=10.250.$n.1
  ip netns add "$NETNS"
  ip link add "$HOST_IF" type veth peer name "$NODE_IF"
  ip link set "$NODE_IF" netns "$NETNS"
  ip addr add "$host_ip/30" dev "$HOST_IF"
  ip link set "$HOST_IF" up
  ip -n "$NETNS" link set lo up
  ip -n "$NETNS" addr add "$node_ip/30" dev "$NODE_IF"
  ip -n "$NETNS" link set "$NODE_IF" up
  ip -n "$NETNS" route add default via "$host_ip"
  # The pod bridge exists before the first pod so CoreDNS can bind its address; the bridge CNI
  # plugin adopts it (same name, gateway address .1).
  ip -n "$NETNS" link add cni0 type bridge
  ip -n "$NETNS" addr add "$dns_ip/24" dev cni0
  ip -n "$NETNS" link set cni0 up
  ip netns exec "$NETNS" sysctl -qw net.ipv4.ip_forward=1
  ip route add "$pod_cidr" via "$node_ip" dev "$HOST_IF"
  cat > "$NODE_DIR/net.env" <<EOF
NODE_HOST_IP=$host_ip
NODE_IP=$node_ip
NODE_POD_CIDR=$pod_cidr
NODE_DNS_IP=$dns_ip
EOF
  cat "$NODE_DIR/net.env"
}

net_down() {
  if load_net 2>/dev/null; then
    ip route del "$NODE_POD_CIDR" 2>/dev/null || true
  fi
  # Deleting the namespace deletes its end of the veth, which takes the host's end with it,
  # and every iptables rule kube-proxy wrote there.
  ip netns del "$NETNS" 2>/dev/null || true
  ip link del "$HOST_IF" 2>/dev/null || true
  rm -f "$NODE_DIR/net.env"
}

in_node() { # in_node CMD...: run in the node's network and mount namespaces
  nsenter --target "$(pid_of holder)" --mount --net -- "$@"
}

spawn() { # spawn NAME CMD...: a daemon of the node, in its namespaces, own session, logged
  local name=$1; shift
  setsid nsenter --target "$(pid_of holder)" --mount --net -- "$@" >"$NODE_DIR/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$NODE_DIR/pids/$name.pid"
}

wait_for() { # wait_for WHAT SECONDS CMD...
  local what=$1 limit=$2; shift 2
  local deadline=$((SECONDS + limit)) name pid
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "$what not ready after ${limit} s (logs: $NODE_DIR/logs)"
    for name in "${DAEMONS[@]}"; do
      pid=$(pid_of "$name") || continue
      running "$pid" || die "$name exited while waiting for $what: $(tail -n 5 "$NODE_DIR/logs/$name.log")"
    done
    sleep 0.2
  done
}

cgroup_dirs() { # every hierarchy's /serveform-<id>, deepest first
  local mount
  for mount in /sys/fs/cgroup/*/; do
    [ -d "$mount${CGROUP_ROOT#/}" ] && find "$mount${CGROUP_ROOT#/}" -depth -type d
  done 2>/dev/null || true
}

node_config() {
  local kubeconfig=$DIR/kubeconfig sock=$RUN_DIR/containerd.sock
  mkdir -p "$NODE_DIR/containerd/root" "$NODE_DIR/cni" "$NODE_DIR/pod-logs"
  # Pod sandboxes run the project's pause image; restrict_oom_score_adj because root here may
  # not lower oom_score_adj (every sandbox fails otherwise); netns mounts under the state dir.
  cat > "$NODE_DIR/containerd.toml" <<EOF
version = 2
root = "$NODE_DIR/containerd/root"
state = "$RUN_DIR/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_REF"
  restrict_oom_score_adj = true
  enable_selinux = false
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE_DIR/cni"
EOF
  cat > "$NODE_DIR/cni/10-pods.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "k8s-local-pods", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$NODE_POD_CIDR", "gateway": "$NODE_DNS_IP"}]],
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$NODE_DIR/cni/ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}}
]}
EOF
  # No pulls are possible here: images must never be garbage-collected (100 %), and the disk of
  # a shared development machine must not evict pods (1 %).
  cat > "$NODE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP_ROOT
containerRuntimeEndpoint: unix://$sock
address: $NODE_IP
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
# Only clients with a certificate of k8s-local's kubelet-client CA (the API server: logs, exec).
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $DIR/pki/kubelet-client-ca.crt}
authorization: {mode: AlwaysAllow}
podLogsDir: $NODE_DIR/pod-logs
clusterDNS: [$NODE_DNS_IP]
clusterDomain: $CLUSTER_DOMAIN
resolvConf: $NODE_DIR/resolv.conf
failSwapOn: false
podCIDR: $NODE_POD_CIDR
maxPods: 40
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
makeIPTablesUtilChains: false
fileCheckFrequency: 60s
syncFrequency: 10s
nodeStatusReportFrequency: 10s
EOF
  # Pods resolve only cluster names (no upstream resolver is reachable from the node anyway).
  printf 'nameserver %s\n' "$NODE_DNS_IP" > "$NODE_DIR/resolv.conf"
  cat > "$NODE_DIR/Corefile" <<EOF
$CLUSTER_DOMAIN:53 in-addr.arpa:53 {
    bind $NODE_DNS_IP
    errors
    kubernetes $CLUSTER_DOMAIN in-addr.arpa {
        kubeconfig $kubeconfig k8s-local
        pods insecure
    }
    cache 5
}
.:53 {
    bind $NODE_DNS_IP
    errors
}
EOF
  : "$kubeconfig"
}

node_kubeconfig() { # node_kubeconfig NAME TOKEN: a kubeconfig for a node daemon
  local ca
  ca=$(base64 -w0 < "$DIR/pki/serving.crt")
  (umask 077; cat > "$NODE_DIR/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: k8s-local
  cluster: {server: "https://$NODE_HOST_IP:$APISERVER_PORT", certificate-authority-data: $ca}
users:
- name: $1
  user: {token: $2}
contexts:
- name: k8s-local
  context: {cluster: k8s-local, user: $1}
current-context: k8s-local
EOF
  )
}

import_image() { # import_image REF ARCHIVE: into containerd's k8s.io namespace unless there
  local ref=$1 archive=$2 ctr=(ctr --address "$RUN_DIR/containerd.sock" --namespace k8s.io)
  if in_node "${ctr[@]}" images ls -q 2>/dev/null | grep -qxF "docker.io/library/$ref"; then return; fi
  [ -f "$archive" ] || die "$archive: image $ref is not built (serveform image build; make image)"
  local t0=$SECONDS
  in_node "${ctr[@]}" images import --no-unpack=false "$archive" >/dev/null
  log "imported $ref in $((SECONDS - t0)) s"
}

import_images() { # the pause image and this checkout's runtime image, as built now
  if [ -z "${RUNTIME_REF:-}" ] || [ -z "${PAUSE_REF:-}" ]; then
    eval "$("$PY" -m serveform.image node --project-dir "$ROOT" --pause "$PAUSE")"
  fi
  import_image "$PAUSE_REF" "$PAUSE_ARCHIVE"
  import_image "$RUNTIME_REF" "$RUNTIME_ARCHIVE"
  echo "$RUNTIME_REF" > "$NODE_DIR/runtime-image"
}

images() { # a running node gets the images of the checkout as it is now (code changed since start)
  running "$(pid_of holder)" && running "$(pid_of containerd)" || die "the node is not running: tools/k8s-local.sh start"
  eval "$("$ROOT/tools/k8s/build.sh" paths)"
  import_images
}

start() {
  load_net || die "node network missing: run net-up first"
  # shellcheck disable=SC1091
  . "$DIR/ports.env"
  eval "$("$ROOT/tools/k8s/build.sh" paths)"
  [ -x "$KUBELET" ] && [ -x "$KUBE_PROXY" ] && [ -x "$COREDNS" ] && [ -x "$PAUSE" ] \
    || die "node binaries missing: tools/k8s/build.sh all"
  if [ -z "${PAUSE_REF:-}" ]; then  # containerd's sandbox image (tools/k8s-local.sh passes it)
    PAUSE_REF=$("$PY" -m serveform.image pause "$PAUSE")
    PAUSE_REF=${PAUSE_REF%% *}
  fi
  node_config
  local mount
  for mount in /sys/fs/cgroup/*/; do
    [ -L "${mount%/}" ] || mkdir -p "$mount${CGROUP_ROOT#/}" 2>/dev/null || true
  done

  # The mount namespace every daemon of the node shares; private, so nothing made in it
  # reaches the host, and it is gone when its last process is.
  mkdir -p "$RUN_DIR" "$KUBELET_DIR"
  setsid nsenter --net="/run/netns/$NETNS" -- unshare --mount --propagation private \
    sh -c "mount -t tmpfs -o mode=0711 tmpfs $RUN_DIR && mount -t tmpfs -o mode=0700 tmpfs $KUBELET_DIR && exec sleep infinity" \
    >/dev/null 2>&1 < /dev/null &
  echo $! > "$NODE_DIR/pids/holder.pid"
  local deadline=$((SECONDS + 5)) holder
  # The holder's pid is setsid's: wait until it is the sleep, in its namespace, over its tmpfs.
  while holder=$(pid_of holder); [ "$(readlink "/proc/$holder/exe" 2>/dev/null)" != "$(readlink -f "$(command -v sleep)")" ]; do
    [ $SECONDS -lt $deadline ] || die "could not create the node's mount namespace"
    running "$holder" || die "the node's mount namespace holder exited"
    sleep 0.05
  done

  spawn containerd containerd --config "$NODE_DIR/containerd.toml"
  wait_for containerd 30 in_node ctr --address "$RUN_DIR/containerd.sock" version
  import_images

  node_kubeconfig kubelet "$(cat "$DIR/pki/node.token")"
  node_kubeconfig kube-proxy "$(cat "$DIR/pki/proxy.token")"
  spawn kubelet "$KUBELET" --config "$NODE_DIR/kubelet.yaml" --kubeconfig "$NODE_DIR/kubelet.kubeconfig" \
    --root-dir "$KUBELET_DIR" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" \
    --node-labels "serveform.dev/node=real"
  # --masquerade-all: a pod reaching a Service whose endpoint is on the same bridge would
  # otherwise get the reply straight over the bridge, past the connection tracking of the DNAT.
  spawn kube-proxy "$KUBE_PROXY" --kubeconfig "$NODE_DIR/kube-proxy.kubeconfig" \
    --hostname-override "$NODE_NAME" --proxy-mode iptables --cluster-cidr "$NODE_POD_CIDR" \
    --masquerade-all --conntrack-max-per-core 0 --conntrack-tcp-timeout-established 0 \
    --conntrack-tcp-timeout-close-wait 0 --metrics-bind-address 127.0.0.1:10249 \
    --healthz-bind-address 127.0.0.1:10256
  spawn coredns "$COREDNS" -conf "$NODE_DIR/Corefile"
}

stop() {
  local name pid deadline
  for name in "${DAEMONS[@]}"; do
    pid=$(pid_of "$name") || continue
    if running "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      deadline=$((SECONDS + STOP_TIMEOUT_SECONDS))
      while running "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.05; done
      running "$pid" && kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$NODE_DIR/pids/$name.pid"
  done
  # What the daemons leave: containerd's shims and the pods' processes. Shims share the
  # holder's mount namespace; containers sit in the node's cgroups.
  local holder_ns="" pids=() proc
  if pid=$(pid_of holder) && running "$pid"; then holder_ns=$(readlink "/proc/$pid/ns/mnt" 2>/dev/null || true); fi
  local round
  for round in 1 2 3; do
    pids=()
    for proc in /proc/[0-9]*; do
      proc=${proc#/proc/}
      [ "$proc" = "$(pid_of holder 2>/dev/null)" ] && continue
      if [ -n "$holder_ns" ] && [ "$(readlink "/proc/$proc/ns/mnt" 2>/dev/null)" = "$holder_ns" ]; then pids+=("$proc"); fi
    done
    local dir
    while read -r dir; do
      [ -f "$dir/cgroup.procs" ] && mapfile -t -O "${#pids[@]}" pids < "$dir/cgroup.procs"
    done < <(cgroup_dirs)
    # Everything in the node's network namespace too: found even when the pid files are gone.
    mapfile -t -O "${#pids[@]}" pids < <(ip netns pids "$NETNS" 2>/dev/null)
    [ ${#pids[@]} -gt 0 ] || break
    kill -KILL "${pids[@]}" 2>/dev/null || true
    sleep 0.2
  done
  pid=$(pid_of holder) && { kill -KILL "$pid" 2>/dev/null || true; }
  rm -f "$NODE_DIR/pids/holder.pid"
  local dir
  for round in 1 2 3 4 5; do
    local left=0
    while read -r dir; do rmdir "$dir" 2>/dev/null || left=1; done < <(cgroup_dirs)
    [ $left = 0 ] && break
    sleep 0.2
  done
  net_down
  rm -rf "$NODE_DIR/cni/ipam" "$NODE_DIR/pod-logs"
}

resources() { # what stop must remove, one per line
  ip netns list 2>/dev/null | awk '{print "netns " $1}' | grep -F "sf-$ID" || true
  ip -o link show 2>/dev/null | awk -F': ' '{print "link " $2}' | grep -F "sf$ID" || true
  grep -F " $DIR/" /proc/self/mounts | awk '{print "mount " $2}' || true
  cgroup_dirs | sed 's/^/cgroup /'
  local name pid
  for name in holder "${DAEMONS[@]}"; do
    pid=$(pid_of "$name") && running "$pid" && echo "process $name $pid"
  done
  true
}

case "$CMD" in
  net-up) net_up ;;
  start) start ;;
  images) images ;;
  stop) stop ;;
  resources) resources ;;
  *) echo "usage: $0 net-up|start|stop|resources DIR" >&2; exit 2 ;;
esac
