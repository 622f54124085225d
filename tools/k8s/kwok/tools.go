//go:build tools

// Package tools pins kwok, which plays the kubelets of fake nodes for the
// k8s-local environment, so `go build` resolves against this module's go.mod.
package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"
