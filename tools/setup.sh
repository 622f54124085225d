#!/usr/bin/env bash
# Provides everything serveform needs on a fresh machine, idempotently:
#   - the project's Python environment in .venv (editable install with test extras),
#   - the Pulumi CLI v3.259.0 and its Python shims,
#   - Caddy v2.11.9 with the DNS-provider and rate-limit modules,
#   - the k8s-local control plane, kwok, etcd and the Pulumi Kubernetes provider (tools/k8s/build.sh),
#   - actionlint, which checks the GitHub workflows (tools/actionlint/build.sh).
# Binaries that cannot be downloaded here are built with Go from the module proxy into
# ~/.cache/serveform/<name>-<version>/ (outside the checkout, keyed by version), so a
# second run takes seconds. They are linked into .venv/bin, which the Makefile puts on PATH.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${SERVEFORM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/serveform}
PULUMI_VERSION=v3.259.0
CADDY_VERSION=v2.11.9
VENV=$ROOT/.venv
PY=${PYTHON:-python3}
EXTRAS=${SERVEFORM_EXTRAS:-test,k8s,cloud}

mkdir -p "$CACHE"
log() { printf '[setup] %s\n' "$*" >&2; }

# Several checkouts (or test sessions) may run setup at once: one builder at a time.
exec 9>"$CACHE/.setup.lock"
flock 9

export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
# Modules the checksum database does not know; their hashes are pinned in the committed go.sum.
export GONOSUMDB=github.com/caddy-dns,github.com/mholt/caddy-ratelimit,github.com/pulumi

build_pulumi() {
  local dest=$CACHE/pulumi-$PULUMI_VERSION/bin
  mkdir -p "$dest"
  if [ ! -x "$dest/pulumi" ]; then
    log "building the Pulumi CLI $PULUMI_VERSION from the Go module proxy (about 4 minutes cold)"
    local t0=$SECONDS
    (cd "$ROOT/tools/pulumi" && go build -trimpath \
        -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$PULUMI_VERSION" \
        -o "$dest/pulumi.tmp" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi)
    mv "$dest/pulumi.tmp" "$dest/pulumi"
    log "pulumi built in $((SECONDS - t0)) s"
  fi
  if [ -x "$dest/pulumi-resource-pulumi-python" ]; then return; fi
  # The Python shims ship in the sdk module zip (read-only there).
  local sdk
  sdk=$(cd "$ROOT/tools/pulumi" && go list -m -f '{{.Dir}}' github.com/pulumi/pulumi/sdk/v3)
  install -m 0755 "$sdk/python/cmd/pulumi-language-python-exec" "$dest/"
  install -m 0755 "$sdk/python/dist/pulumi-resource-pulumi-python" "$dest/"
}

build_caddy() {
  local dest=$CACHE/caddy-$CADDY_VERSION/bin
  local stamp
  stamp=$(cat "$ROOT/tools/caddy/go.mod" "$ROOT/tools/caddy/go.sum" "$ROOT/tools/caddy/main.go" | sha256sum | cut -c1-12)
  if [ -x "$dest/caddy" ] && [ "$(cat "$dest/.stamp" 2>/dev/null)" = "$stamp" ]; then return; fi
  log "building Caddy $CADDY_VERSION with DNS modules (about 3 minutes cold)"
  mkdir -p "$dest"
  local t0=$SECONDS
  (cd "$ROOT/tools/caddy" && go build -trimpath -ldflags "-s -w" -o "$dest/caddy.tmp" .)
  mv "$dest/caddy.tmp" "$dest/caddy"
  echo "$stamp" > "$dest/.stamp"
  log "caddy built in $((SECONDS - t0)) s"
}

python_env() {
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
  fi
  local stamp
  stamp=$( (cat "$ROOT/pyproject.toml" "$ROOT/setup.py"; echo "$EXTRAS") | sha256sum | cut -c1-12)
  if [ "$(cat "$VENV/.serveform-stamp" 2>/dev/null)" != "$stamp" ]; then
    log "installing serveform[$EXTRAS] into $VENV"
    "$VENV/bin/python" -m pip install -q -e "$ROOT[$EXTRAS]"
    echo "$stamp" > "$VENV/.serveform-stamp"
  fi
}

link_tools() {
  local f
  for f in "$CACHE/pulumi-$PULUMI_VERSION/bin/"* "$CACHE/caddy-$CADDY_VERSION/bin/caddy"; do
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

case "${1:-all}" in
  pulumi) build_pulumi ;;
  caddy) build_caddy ;;
  python) python_env ;;
  k8s) "$ROOT/tools/k8s/build.sh" all ;;
  all)
    python_env
    build_pulumi
    build_caddy
    link_tools
    "$ROOT/tools/k8s/build.sh" all
    "$ROOT/tools/actionlint/build.sh" >/dev/null
    ;;
  *) echo "usage: $0 [all|python|pulumi|caddy|k8s]" >&2; exit 2 ;;
esac
