//go:build tools

// Package tools pins actionlint so that `go build` of its command resolves
// against the versions in this module's go.mod.
package tools

import _ "github.com/rhysd/actionlint/cmd/actionlint"
