//go:build tools

// Package tools pins CoreDNS v1.15.0, k8s-local's cluster DNS: it runs on the host, bound to
// the pod bridge's address, with the `kubernetes` plugin reading Services and EndpointSlices.
package tools

import (
	_ "github.com/coredns/coredns"
)
