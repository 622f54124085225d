//go:build tools

// Package tools pins the node commands (kubelet, kube-proxy) of k8s-local's real node. A module
// of its own beside ../kubernetes: their packages need go.sum entries the control plane does
// not, and a changed ../kubernetes/go.sum would rebuild the control plane. Every staging module
// is replaced by its v0.37.2 release, as there.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
