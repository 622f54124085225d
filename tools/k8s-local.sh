#!/usr/bin/env bash
# k8s-local: a real Kubernetes control plane on loopback, for the `k8s` stack and its tests.
#
#   tools/k8s-local.sh start   build or reuse the pinned binaries (tools/k8s/build.sh), then start
#                              etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok
#                              (two fake nodes: a CPU node and a tainted GPU node advertising
#                              nvidia.com/gpu) and a loopback load-balancer; write a kubeconfig.
#   tools/k8s-local.sh stop    stop every process it started and delete the cluster's data.
#   tools/k8s-local.sh status  exit 0 when the cluster answers /readyz.
#   tools/k8s-local.sh env     print KUBECONFIG=... for `eval`.
#
# Everything lives in $K8S_LOCAL_DIR (default <checkout>/.serveform/k8s-local): certificates,
# the admin token (mode 0600), logs, pid files, etcd's data and `kubeconfig` (context k8s-local).
# All ports are free loopback ports picked at start. Nothing here needs root.
#
# Timings: `start` prints "[k8s-local] ready in N s (build M s)" on stderr.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${K8S_LOCAL_DIR:-$ROOT/.serveform/k8s-local}
READY_TIMEOUT_SECONDS=${K8S_LOCAL_READY_TIMEOUT_SECONDS:-120}
STOP_TIMEOUT_SECONDS=15
CONTEXT=k8s-local
# The GPU node's capacity: enough for the examples, few enough that "too many GPUs" is easy to ask.
GPU_NODE_GPUS=4
GPU_NODE_PRODUCT=NVIDIA-A100-SXM4-80GB
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3

log() { printf '[k8s-local] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

free_port() {
  "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

running() { # running PID: the process exists and is not a zombie waiting for its reaper
  kill -0 "$1" 2>/dev/null || return 1
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ "$state" != Z ]
}

alive() { # alive NAME: its recorded process is running
  local pid
  pid=$(cat "$DIR/pids/$1.pid" 2>/dev/null) || return 1
  running "$pid"
}

spawn() { # spawn NAME CMD...: start detached (own session), log to logs/NAME.log
  local name=$1; shift
  setsid "$@" >"$DIR/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$DIR/pids/$name.pid"
}

api() { # api METHOD PATH [BODY]: call the API server as admin
  local method=$1 path=$2 body=${3:-}
  curl -sS --fail-with-body --max-time 10 --cacert "$DIR/pki/serving.crt" \
    -H "Authorization: Bearer $(cat "$DIR/pki/admin.token")" -H 'Content-Type: application/json' \
    -X "$method" ${body:+--data "$body"} "https://127.0.0.1:$APISERVER_PORT$path"
}

wait_for() { # wait_for WHAT DEADLINE_SECONDS CMD...: poll CMD until it succeeds
  local what=$1 limit=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "$what not ready after ${limit} s (logs: $DIR/logs)"
    local name
    for name in "$DIR"/pids/*.pid; do
      name=$(basename "$name" .pid)
      alive "$name" || die "$name exited while waiting for $what; see $DIR/logs/$name.log: $(tail -n 5 "$DIR/logs/$name.log")"
    done
    sleep 0.2
  done
}

pki() {
  mkdir -p "$DIR/pki"
  chmod 0700 "$DIR/pki"
  local p=$DIR/pki
  [ -s "$p/serving.crt" ] && return
  # The serving certificate is its own CA: clients pin it through the kubeconfig.
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=k8s-local" \
    -addext "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default.svc" \
    -keyout "$p/serving.key" -out "$p/serving.crt" 2>/dev/null
  openssl genrsa -out "$p/sa.key" 2048 2>/dev/null
  openssl rsa -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null
  "$PY" -c 'import secrets; print(secrets.token_hex(24))' > "$p/admin.token"
  # Static tokens: the admin user is in system:masters, so RBAC lets it do everything.
  printf '%s,admin,admin,"system:masters"\n' "$(cat "$p/admin.token")" > "$p/tokens.csv"
  chmod 0600 "$p"/*
}

kubeconfig() { # kubeconfig FILE: an admin kubeconfig for the running cluster
  local ca token
  ca=$(base64 -w0 < "$DIR/pki/serving.crt")
  token=$(cat "$DIR/pki/admin.token")
  (umask 077; cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: $CONTEXT
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $ca
users:
- name: $CONTEXT-admin
  user:
    token: $token
contexts:
- name: $CONTEXT
  context:
    cluster: $CONTEXT
    user: $CONTEXT-admin
    namespace: default
current-context: $CONTEXT
EOF
  )
}

node_json() { # node_json NAME GPUS: a kwok-managed fake node
  local name=$1 gpus=$2 extra_labels="" taints="[]" gpu_capacity=""
  if [ "$gpus" -gt 0 ]; then
    extra_labels=', "nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": "'$GPU_NODE_PRODUCT'", "nvidia.com/gpu.count": "'$gpus'"'
    # GPU nodes are tainted as on managed clusters (GKE, AKS): only pods that tolerate it land there.
    taints='[{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]'
    gpu_capacity=', "nvidia.com/gpu": "'$gpus'"'
  fi
  local capacity='"cpu": "32", "memory": "128Gi", "pods": "110", "ephemeral-storage": "500Gi"'"$gpu_capacity"
  cat <<EOF
{"apiVersion": "v1", "kind": "Node",
 "metadata": {"name": "$name",
   "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
   "labels": {"type": "kwok", "kubernetes.io/hostname": "$name", "kubernetes.io/os": "linux",
              "kubernetes.io/arch": "amd64", "kubernetes.io/role": "agent"$extra_labels}},
 "spec": {"taints": $taints},
 "status": {"capacity": {$capacity}, "allocatable": {$capacity},
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "fake"}}}
EOF
}

node_ready() { # node_ready NAME
  api GET "/api/v1/nodes/$1" | "$PY" -c '
import json, sys
node = json.load(sys.stdin)
ready = [c for c in node.get("status", {}).get("conditions", []) if c["type"] == "Ready"]
sys.exit(0 if ready and ready[0]["status"] == "True" else 1)'
}

start() {
  if [ -f "$DIR/ports.env" ] && alive kube-apiserver; then
    # shellcheck disable=SC1091
    . "$DIR/ports.env"
    if api GET /readyz >/dev/null 2>&1; then log "already running ($DIR/kubeconfig)"; return; fi
  fi
  stop_all quiet
  local t0=$SECONDS
  "$ROOT/tools/k8s/build.sh" all
  local build_s=$((SECONDS - t0))
  eval "$("$ROOT/tools/k8s/build.sh" paths)"
  mkdir -p "$DIR/logs" "$DIR/pids"
  pki

  local etcd_port etcd_peer_port
  etcd_port=$(free_port); etcd_peer_port=$(free_port)
  APISERVER_PORT=$(free_port)
  printf 'APISERVER_PORT=%s\nETCD_PORT=%s\n' "$APISERVER_PORT" "$etcd_port" > "$DIR/ports.env"

  rm -rf "$DIR/etcd"
  spawn etcd "$ETCD" --name k8s-local --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster "k8s-local=http://127.0.0.1:$etcd_peer_port" --listen-metrics-urls "" \
    --quota-backend-bytes 1073741824
  wait_for etcd 30 curl -sf "http://127.0.0.1:$etcd_port/health"

  # --endpoint-reconciler-type=none: the default reconciler refuses a loopback advertise address.
  spawn kube-apiserver "$KUBE_APISERVER" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$APISERVER_PORT" \
    --endpoint-reconciler-type none \
    --tls-cert-file "$DIR/pki/serving.crt" --tls-private-key-file "$DIR/pki/serving.key" \
    --token-auth-file "$DIR/pki/tokens.csv" --authorization-mode RBAC --anonymous-auth=false \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$DIR/pki/sa.pub" --service-account-signing-key-file "$DIR/pki/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 --allow-privileged=true \
    --enable-priority-and-fairness=false --profiling=false
  wait_for kube-apiserver 60 api GET /readyz

  kubeconfig "$DIR/kubeconfig"
  spawn kube-controller-manager "$KUBE_CONTROLLER_MANAGER" \
    --kubeconfig "$DIR/kubeconfig" --leader-elect=false --secure-port 0 \
    --service-account-private-key-file "$DIR/pki/sa.key" --root-ca-file "$DIR/pki/serving.crt" \
    --use-service-account-credentials=false --controllers '*,-node-ipam-controller'
  spawn kube-scheduler "$KUBE_SCHEDULER" --kubeconfig "$DIR/kubeconfig" --leader-elect=false \
    --secure-port "$(free_port)" --bind-address 127.0.0.1 \
    --authentication-skip-lookup=true --authorization-always-allow-paths /healthz,/readyz,/livez,/metrics
  # An empty configuration: kwok's built-in stages (nodes Ready with leases, pods Running),
  # and never a ~/.kwok/kwok.yaml the user may have.
  printf 'apiVersion: config.kwok.x-k8s.io/v1alpha1\nkind: KwokConfiguration\noptions: {}\n' > "$DIR/kwok.yaml"
  spawn kwok "$KWOK" --config "$DIR/kwok.yaml" --kubeconfig "$DIR/kubeconfig" --manage-all-nodes=false \
    --node-lease-duration-seconds 40 \
    --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --node-ip 127.0.0.1 --node-port "$(free_port)" --server-address "127.0.0.1:$(free_port)" --cidr 10.244.0.0/16
  spawn loadbalancer "$PY" "$ROOT/tools/k8s/loadbalancer.py" --kubeconfig "$DIR/kubeconfig"

  api POST /api/v1/nodes "$(node_json kwok-cpu-0 0)" >/dev/null
  api POST /api/v1/nodes "$(node_json kwok-gpu-0 "$GPU_NODE_GPUS")" >/dev/null
  wait_for "node kwok-cpu-0" "$READY_TIMEOUT_SECONDS" node_ready kwok-cpu-0
  wait_for "node kwok-gpu-0" "$READY_TIMEOUT_SECONDS" node_ready kwok-gpu-0
  # Pods need the namespace's default ServiceAccount, which the controller-manager creates.
  wait_for "default service account" "$READY_TIMEOUT_SECONDS" api GET /api/v1/namespaces/default/serviceaccounts/default
  log "ready in $((SECONDS - t0)) s (build $build_s s); KUBECONFIG=$DIR/kubeconfig"
}

stop_all() {
  local quiet=${1:-}
  [ -d "$DIR/pids" ] || return 0
  local name pid deadline
  # Reverse start order: clients first, etcd last.
  for name in loadbalancer kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do
    pid=$(cat "$DIR/pids/$name.pid" 2>/dev/null) || continue
    if running "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      deadline=$((SECONDS + STOP_TIMEOUT_SECONDS))
      while running "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.05; done
      running "$pid" && kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$DIR/pids/$name.pid"
  done
  rm -rf "$DIR/etcd" "$DIR/ports.env"
  [ -n "$quiet" ] || log "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop_all ;;
  status)
    [ -f "$DIR/ports.env" ] || exit 1
    # shellcheck disable=SC1091
    . "$DIR/ports.env"
    api GET /readyz >/dev/null 2>&1
    ;;
  env) echo "KUBECONFIG=$DIR/kubeconfig" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
