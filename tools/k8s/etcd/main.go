// Command etcd is the key-value store of k8s-local, built from etcd's server module.
// Debian's etcd 3.4 lacks the watch progress requests that kube-apiserver 1.37 needs to serve
// streaming lists, so clients that ask for them (kwok) fell back to slow relists with it.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
