#!/usr/bin/env bash
# Provides what serveform needs on a fresh machine, idempotently. Two profiles:
#   dev  (make up)   the Python environment in .venv (serveform + the openai client the printed
#                    example uses), the Pulumi CLI v3.259.0 with its Python shims, and Caddy
#                    v2.11.9 with the DNS-provider and rate-limit modules: all the dev stack runs;
#   k8s  (make k8s-up) dev plus the Kubernetes SDK, k8s-local and the Kubernetes provider;
#   all  (make test) the above with the test, k8s and cloud extras, plus the k8s-local control
#                    plane, kwok, etcd, the Pulumi Kubernetes provider, the real node's kubelet,
#                    kube-proxy and CoreDNS (tools/k8s/build.sh), the node's Debian packages
#                    (containerd, runc, CNI plugins; tools/k8s/host-packages.sh), serveform's
#                    runtime image (serveform image build), actionlint (tools/actionlint/build.sh)
#                    and the VM boot tests' Debian root with systemd + cloud-init (tools/vmboot/setup.sh).
# Binaries that cannot be downloaded here are built with Go from the module proxy into
# ~/.cache/serveform/<name>-<version>/ (outside the checkout, keyed by version), so a
# second run takes seconds. They are linked into .venv/bin, which the Makefile puts on PATH.
# The Python environment is installed while Go builds, so a cold `dev` costs about as long
# as the two Go builds (~5 minutes on 2 cores), not their sum with pip's.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${SERVEFORM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/serveform}
PULUMI_VERSION=v3.259.0
CADDY_VERSION=v2.11.9
VENV=$ROOT/.venv
PY=${PYTHON:-python3}

mkdir -p "$CACHE"
T0=$SECONDS
log() { printf '[setup %3ds] %s\n' "$((SECONDS - T0))" "$*" >&2; }

# Several checkouts (or test sessions) may run setup at once: one builder of the shared
# binaries at a time. The lock is held for the Pulumi/Caddy/venv phase only (`base`): the k8s
# and actionlint builds take their own locks, so a `make up` never waits for a k8s build.
exec 9>"$CACHE/.setup.lock"
flock 9

export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
# Modules the checksum database does not know; their hashes are pinned in the committed go.sum.
export GONOSUMDB=github.com/caddy-dns,github.com/mholt/caddy-ratelimit,github.com/pulumi

PULUMI_BIN=$CACHE/pulumi-$PULUMI_VERSION/bin
# The Caddy build includes the gateway's own modules (tools/caddy/serveform), so its cache is
# keyed by a hash of every source file: checkouts on different commits never overwrite each
# other's binary.
caddy_stamp() { (cd "$ROOT/tools/caddy" && cat go.mod go.sum $(find . -name '*.go' | LC_ALL=C sort)) | sha256sum | cut -c1-12; }
CADDY_BIN=$CACHE/caddy-$CADDY_VERSION-$(caddy_stamp)/bin
pulumi_fresh() { [ -x "$PULUMI_BIN/pulumi" ] && [ -x "$PULUMI_BIN/pulumi-resource-pulumi-python" ]; }
caddy_fresh() { [ -x "$CADDY_BIN/caddy" ] && [ "$(cat "$CADDY_BIN/.stamp" 2>/dev/null)" = "$(caddy_stamp)" ]; }

build_pulumi() {
  mkdir -p "$PULUMI_BIN"
  if [ ! -x "$PULUMI_BIN/pulumi" ]; then
    log "pulumi: building the CLI $PULUMI_VERSION from the Go module proxy (about 4 minutes cold)"
    local t0=$SECONDS
    (cd "$ROOT/tools/pulumi" && go build -trimpath \
        -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$PULUMI_VERSION" \
        -o "$PULUMI_BIN/pulumi.tmp" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi)
    mv "$PULUMI_BIN/pulumi.tmp" "$PULUMI_BIN/pulumi"
    log "pulumi: built in $((SECONDS - t0)) s"
  fi
  if [ -x "$PULUMI_BIN/pulumi-resource-pulumi-python" ]; then return; fi
  # The Python shims ship in the sdk module zip (read-only there).
  local sdk
  sdk=$(cd "$ROOT/tools/pulumi" && go list -m -f '{{.Dir}}' github.com/pulumi/pulumi/sdk/v3)
  install -m 0755 "$sdk/python/cmd/pulumi-language-python-exec" "$PULUMI_BIN/"
  install -m 0755 "$sdk/python/dist/pulumi-resource-pulumi-python" "$PULUMI_BIN/"
}

build_caddy() {
  if caddy_fresh; then return; fi
  log "caddy: building $CADDY_VERSION with the DNS and rate-limit modules (about 2-3 minutes cold)"
  mkdir -p "$CADDY_BIN"
  local t0=$SECONDS
  (cd "$ROOT/tools/caddy" && go build -trimpath -ldflags "-s -w" -o "$CADDY_BIN/caddy.tmp" .)
  mv "$CADDY_BIN/caddy.tmp" "$CADDY_BIN/caddy"
  caddy_stamp > "$CADDY_BIN/.stamp"
  log "caddy: built in $((SECONDS - t0)) s"
}

python_env() { # python_env EXTRAS
  local extras=$1 t0=$SECONDS
  if [ ! -x "$VENV/bin/python" ]; then
    log "python: creating $VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
  fi
  local stamp
  stamp=$( (cat "$ROOT/pyproject.toml" "$ROOT/setup.py"; echo "$extras") | sha256sum | cut -c1-12)
  # A venv installed with more extras serves a smaller profile too: `make up` after `make test`
  # must not reinstall.
  if grep -qxF "$stamp" "$VENV/.serveform-stamps" 2>/dev/null; then return; fi
  log "python: installing serveform[$extras] into $VENV (about 1-2 minutes cold)"
  "$VENV/bin/python" -m pip install -q -e "$ROOT[$extras]"
  echo "$stamp" >> "$VENV/.serveform-stamps"
  log "python: installed in $((SECONDS - t0)) s"
}

link_tools() {
  local f
  for f in "$PULUMI_BIN/"* "$CADDY_BIN/caddy"; do
    ln -sf "$f" "$VENV/bin/$(basename "$f")"
  done
  # Our own Python language host, for plain `pulumi preview|up` in the project directory
  # where the official pulumi-language-python is not installed.
  if ! command -v pulumi-language-python >/dev/null 2>&1 || [ -L "$VENV/bin/pulumi-language-python" ] || [ -f "$VENV/bin/pulumi-language-python" ]; then
    cat > "$VENV/bin/pulumi-language-python" <<SH
#!/bin/sh
exec "$VENV/bin/python" -m serveform.stacks.language_host "\$@"
SH
    chmod 0755 "$VENV/bin/pulumi-language-python"
  fi
}

base() { # base EXTRAS: the Python environment (in the background) while Pulumi and Caddy build
  if ! pulumi_fresh || ! caddy_fresh; then
    log "cold build: Pulumi and Caddy from source take about 5 minutes on 2 cores (cached afterwards in $CACHE)"
  fi
  python_env "$1" &
  local py=$!
  build_pulumi
  build_caddy
  wait "$py" || { log "python: installing the environment failed"; exit 1; }
  link_tools
  exec 9>&-
}

case "${1:-all}" in
  pulumi) build_pulumi ;;
  caddy) build_caddy ;;
  python) python_env "${SERVEFORM_EXTRAS:-test,k8s,cloud}" ;;
  k8s)
    base "${SERVEFORM_EXTRAS:-client,k8s}"
    "$ROOT/tools/k8s/build.sh" all
    log "ready (k8s: dev + the Kubernetes SDK, k8s-local, the Kubernetes provider)"
    ;;
  dev)
    base "${SERVEFORM_EXTRAS:-client}"
    log "ready (dev: Python environment, Pulumi, Caddy)"
    ;;
  all)
    base "${SERVEFORM_EXTRAS:-test,k8s,cloud}"
    "$ROOT/tools/k8s/build.sh" all
    "$ROOT/tools/actionlint/build.sh" >/dev/null
    if [ "$(id -u)" = 0 ]; then
      # The real node and the image need root (apt-get, debootstrap); CI runs as root.
      "$ROOT/tools/k8s/host-packages.sh" all
      # The VM boot tests' host packages, cached Debian root and moto (tests/boot/).
      "$ROOT/tools/vmboot/setup.sh" >/dev/null
      t_image=$SECONDS
      "$VENV/bin/python" -m serveform.cli image build --project-dir "$ROOT" >&2
      log "image: ready in $((SECONDS - t_image)) s"
    fi
    log "ready (all: dev + test extras, k8s-local with its real node, the runtime image, actionlint)"
    ;;
  *) echo "usage: $0 [dev|all|python|pulumi|caddy|k8s]" >&2; exit 2 ;;
esac
