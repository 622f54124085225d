// Command pause holds a pod's namespaces on k8s-local's real node: containerd starts one per
// pod sandbox. The usual pause image would be pulled from a registry this machine cannot reach,
// so the project builds its own from the standard library and imports it into containerd.
// It sleeps until SIGTERM or SIGINT and reaps any child that exits, as PID 1 must.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range signals {
		if s == syscall.SIGCHLD {
			for {
				pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
			continue
		}
		os.Exit(0)
	}
}
