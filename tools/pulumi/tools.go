//go:build tools

// Package tools pins the Pulumi CLI so that `go build` of its main package
// resolves against the versions in this module's go.mod.
package tools

import _ "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"
