//go:build tools

// Package tools pins the Kubernetes control-plane commands so that `go build`
// of their main packages resolves against this module's go.mod, in which every
// staging module (a directory replace inside k8s.io/kubernetes) is replaced by
// its published v0.37.2 release.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
