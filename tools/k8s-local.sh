#!/usr/bin/env bash
# k8s-local: a real Kubernetes control plane on loopback, for the `k8s` stack and its tests.
#
#   tools/k8s-local.sh start   build or reuse the pinned binaries (tools/k8s/build.sh), then start
#                              etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok
#                              (a tainted fake GPU node advertising nvidia.com/gpu), a real node
#                              (tools/k8s/node.sh: containerd, kubelet, kube-proxy, CoreDNS, with
#                              serveform's runtime image imported) and a loopback load balancer
#                              that forwards each LoadBalancer Service's ports to its ready pods;
#                              write a kubeconfig.
#   tools/k8s-local.sh stop    stop every process it started, remove the node's network, mounts
#                              and cgroups, and delete the cluster's data.
#   tools/k8s-local.sh status  exit 0 when the cluster answers /readyz.
#   tools/k8s-local.sh env     print KUBECONFIG=... for `eval` (with the real node also the
#                              object store's PULUMI_BACKEND_URL and its AWS_* credentials).
#   tools/k8s-local.sh resources   what `stop` must remove (netns, links, mounts, cgroups, processes).
#
# With the real node, k8s-local also runs an S3-compatible object store (moto's server mode)
# on the node link's host address, with the bucket `serveform-state`: a Pulumi state backend
# (`s3://`) that the host's `serveform up` and the in-cluster scaler share, as S3, GCS or Blob
# storage would be on a real cluster.
#
# Everything lives in $K8S_LOCAL_DIR (default <checkout>/.serveform/k8s-local): certificates,
# the admin token (mode 0600), logs, pid files, etcd's data and `kubeconfig` (context k8s-local).
# All ports are free ports picked at start. The real node needs root (network namespace,
# containerd); K8S_LOCAL_REAL_NODE=0 (the default for other users) starts a fake CPU node in its
# place, as before, and binds the API server to loopback. With the real node the API server
# listens on the host's end of the node's veth (10.249.N.1), which the node and its pods reach,
# and the kubeconfig points there; it is an address of this host only.
#
# Timings: `start` prints "[k8s-local] ready in N s (build M s)" on stderr.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${K8S_LOCAL_DIR:-$ROOT/.serveform/k8s-local}
READY_TIMEOUT_SECONDS=${K8S_LOCAL_READY_TIMEOUT_SECONDS:-120}
STOP_TIMEOUT_SECONDS=15
CONTEXT=k8s-local
STATE_BUCKET=serveform-state
# moto accepts any credentials; these only satisfy the AWS SDK inside Pulumi.
STATE_ACCESS_KEY=k8s-local
STATE_SECRET_KEY=k8s-local-object-store
REAL_NODE_NAME=k8s-local-node
# The GPU node's capacity: enough for the examples, few enough that "too many GPUs" is easy to ask.
GPU_NODE_GPUS=4
GPU_NODE_PRODUCT=NVIDIA-A100-SXM4-80GB
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
NODE=$ROOT/tools/k8s/node.sh
if [ -z "${K8S_LOCAL_REAL_NODE:-}" ]; then
  K8S_LOCAL_REAL_NODE=0
  [ "$(id -u)" = 0 ] && K8S_LOCAL_REAL_NODE=1
fi
API_HOST=127.0.0.1

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
    -X "$method" ${body:+--data "$body"} "https://$API_HOST:$APISERVER_PORT$path"
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
  # The serving certificate is its own CA: clients pin it through the kubeconfig. It names the
  # address the API server listens on and the `kubernetes` Service's cluster IP (pods).
  if ! openssl x509 -in "$p/serving.crt" -noout -ext subjectAltName 2>/dev/null | grep -q "IP Address:$API_HOST\b"; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=k8s-local" \
      -addext "subjectAltName=IP:127.0.0.1,IP:$API_HOST,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" \
      -keyout "$p/serving.key" -out "$p/serving.crt" 2>/dev/null
  fi
  if [ ! -s "$p/sa.key" ]; then
    openssl genrsa -out "$p/sa.key" 2048 2>/dev/null
    openssl rsa -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null
  fi
  if [ ! -s "$p/kubelet-client.crt" ]; then
    # The kubelet accepts only clients with a certificate of this CA: the API server (logs, exec).
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=k8s-local-kubelet-client-ca" \
      -keyout "$p/kubelet-client-ca.key" -out "$p/kubelet-client-ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
      -keyout "$p/kubelet-client.key" -out "$p/kubelet-client.csr" 2>/dev/null
    openssl x509 -req -in "$p/kubelet-client.csr" -CA "$p/kubelet-client-ca.crt" -CAkey "$p/kubelet-client-ca.key" \
      -CAcreateserial -days 3650 -out "$p/kubelet-client.crt" 2>/dev/null
    rm -f "$p/kubelet-client.csr"
  fi
  local name
  for name in admin node proxy; do
    [ -s "$p/$name.token" ] || "$PY" -c 'import secrets; print(secrets.token_hex(24))' > "$p/$name.token"
  done
  # Static tokens: the admin user is in system:masters, so RBAC lets it do everything; the
  # node's kubelet and kube-proxy get the built-in node roles (bound at start).
  {
    printf '%s,admin,admin,"system:masters"\n' "$(cat "$p/admin.token")"
    printf '%s,system:node:%s,node,"system:nodes"\n' "$(cat "$p/node.token")" "$REAL_NODE_NAME"
    printf '%s,system:kube-proxy,kube-proxy\n' "$(cat "$p/proxy.token")"
  } > "$p/tokens.csv"
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
    server: https://$API_HOST:$APISERVER_PORT
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

node_images() { # the runtime and pause images the node imports (cached per layer; built when the checkout changed)
  eval "$("$ROOT/tools/k8s/build.sh" paths)"
  eval "$("$PY" -m serveform.image node --project-dir "$ROOT" --pause "$PAUSE")"
  export RUNTIME_REF RUNTIME_ARCHIVE PAUSE_REF PAUSE_ARCHIVE
}

start() {
  if [ -f "$DIR/ports.env" ] && alive kube-apiserver; then
    # shellcheck disable=SC1091
    . "$DIR/ports.env"
    if api GET /readyz >/dev/null 2>&1; then
      log "already running ($DIR/kubeconfig)"
      if [ -d "$DIR/node" ]; then
        # The checkout may have changed since the cluster started: its pods need today's image.
        node_images
        "$NODE" images "$DIR"
      fi
      return
    fi
  fi
  stop_all quiet
  local t0=$SECONDS
  "$ROOT/tools/k8s/build.sh" all
  if [ "$K8S_LOCAL_REAL_NODE" = 1 ]; then
    "$ROOT/tools/k8s/host-packages.sh" all
  fi
  eval "$("$ROOT/tools/k8s/build.sh" paths)"
  [ "$K8S_LOCAL_REAL_NODE" != 1 ] || node_images
  local build_s=$((SECONDS - t0))
  mkdir -p "$DIR/logs" "$DIR/pids"
  local node_env=""
  if [ "$K8S_LOCAL_REAL_NODE" = 1 ]; then
    node_env=$("$NODE" net-up "$DIR")
    eval "$node_env"
    API_HOST=$NODE_HOST_IP
  fi
  pki

  local etcd_port etcd_peer_port
  etcd_port=$(free_port); etcd_peer_port=$(free_port)
  APISERVER_PORT=$(free_port)
  printf 'APISERVER_PORT=%s\nETCD_PORT=%s\nAPI_HOST=%s\n%s\n' "$APISERVER_PORT" "$etcd_port" "$API_HOST" "$node_env" > "$DIR/ports.env"

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
    --bind-address "$API_HOST" --advertise-address "$API_HOST" --secure-port "$APISERVER_PORT" \
    --kubelet-preferred-address-types InternalIP \
    --kubelet-client-certificate "$DIR/pki/kubelet-client.crt" --kubelet-client-key "$DIR/pki/kubelet-client.key" \
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
  if [ "$K8S_LOCAL_REAL_NODE" = 1 ]; then
    local state_port
    state_port=$(free_port)
    echo "STATE_PORT=$state_port" >> "$DIR/ports.env"
    spawn objectstore "$MOTO_SERVER" -H "$API_HOST" -p "$state_port"
    wait_for "object store" 30 curl -sf -X PUT "http://$API_HOST:$state_port/$STATE_BUCKET"
  fi

  api POST /api/v1/nodes "$(node_json kwok-gpu-0 "$GPU_NODE_GPUS")" >/dev/null
  if [ "$K8S_LOCAL_REAL_NODE" = 1 ]; then
    real_node_access
    "$NODE" start "$DIR"
    wait_for "node $REAL_NODE_NAME" "$READY_TIMEOUT_SECONDS" node_ready "$REAL_NODE_NAME"
  else
    api POST /api/v1/nodes "$(node_json kwok-cpu-0 0)" >/dev/null
    wait_for "node kwok-cpu-0" "$READY_TIMEOUT_SECONDS" node_ready kwok-cpu-0
  fi
  wait_for "node kwok-gpu-0" "$READY_TIMEOUT_SECONDS" node_ready kwok-gpu-0
  # Pods need the namespace's default ServiceAccount, which the controller-manager creates.
  wait_for "default service account" "$READY_TIMEOUT_SECONDS" api GET /api/v1/namespaces/default/serviceaccounts/default
  log "ready in $((SECONDS - t0)) s (build $build_s s); KUBECONFIG=$DIR/kubeconfig"
}

real_node_access() {
  # The built-in roles of a node's kubelet and of kube-proxy (no Node authorizer here: RBAC only).
  api POST /apis/rbac.authorization.k8s.io/v1/clusterrolebindings '{"metadata": {"name": "k8s-local:node"},
    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:node"},
    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:node:'"$REAL_NODE_NAME"'"}]}' >/dev/null
  api POST /apis/rbac.authorization.k8s.io/v1/clusterrolebindings '{"metadata": {"name": "k8s-local:kube-proxy"},
    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:node-proxier"},
    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:kube-proxy"}]}' >/dev/null
  # --endpoint-reconciler-type=none leaves the `kubernetes` Service without endpoints: pods (the
  # in-cluster scaler) reach the API server through this slice, at the node link's host end.
  wait_for "kubernetes service" 30 api GET /api/v1/namespaces/default/services/kubernetes
  api POST /apis/discovery.k8s.io/v1/namespaces/default/endpointslices '{"metadata": {"name": "kubernetes-k8s-local",
    "labels": {"kubernetes.io/service-name": "kubernetes", "endpointslice.kubernetes.io/managed-by": "k8s-local"}},
    "addressType": "IPv4", "endpoints": [{"addresses": ["'"$API_HOST"'"], "conditions": {"ready": true}}],
    "ports": [{"name": "https", "port": '"$APISERVER_PORT"', "protocol": "TCP"}]}' >/dev/null
}

stop_all() {
  local quiet=${1:-}
  # The node first: its kubelet would otherwise retry against a stopped API server.
  if [ -d "$DIR/node" ]; then "$NODE" stop "$DIR"; fi
  [ -d "$DIR/pids" ] || return 0
  local name pid deadline
  # Reverse start order: clients first, etcd last.
  for name in objectstore loadbalancer kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do
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
  resources) [ ! -d "$DIR/node" ] || "$NODE" resources "$DIR" ;;
  env)
    echo "KUBECONFIG=$DIR/kubeconfig"
    if [ -f "$DIR/ports.env" ] && grep -q '^STATE_PORT=' "$DIR/ports.env"; then
      # shellcheck disable=SC1091
      . "$DIR/ports.env"
      echo "PULUMI_BACKEND_URL='s3://$STATE_BUCKET?endpoint=http://$API_HOST:$STATE_PORT&region=us-east-1&use_path_style=true'"
      echo "AWS_ACCESS_KEY_ID=$STATE_ACCESS_KEY"
      echo "AWS_SECRET_ACCESS_KEY=$STATE_SECRET_KEY"
    fi
    ;;
  *) echo "usage: $0 start|stop|status|env|resources" >&2; exit 2 ;;
esac
