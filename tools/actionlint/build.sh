#!/usr/bin/env bash
# Builds actionlint at the version pinned in go.mod from the Go module proxy, once, into
# ~/.cache/serveform/actionlint-<version>/bin/actionlint, and prints the binary's path.
# Tests call it (tests/components/test_workflows.py); `tools/actionlint/build.sh` works by hand too.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${SERVEFORM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/serveform}
VERSION=$(awk '$1 == "require" && $2 == "github.com/rhysd/actionlint" { print $3 }' "$HERE/go.mod")
DEST=$CACHE/actionlint-$VERSION/bin
mkdir -p "$DEST"

# Concurrent callers (parallel test sessions) wait for one build.
exec 9>"$CACHE/.actionlint.lock"
flock 9

if [ ! -x "$DEST/actionlint" ]; then
  echo "[actionlint] building $VERSION from the Go module proxy" >&2
  export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
  (cd "$HERE" && go build -trimpath -ldflags "-s -w -X github.com/rhysd/actionlint.version=$VERSION" \
      -o "$DEST/actionlint.tmp" github.com/rhysd/actionlint/cmd/actionlint)
  mv "$DEST/actionlint.tmp" "$DEST/actionlint"
fi
echo "$DEST/actionlint"
