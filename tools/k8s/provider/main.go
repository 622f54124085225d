// Command pulumi-resource-kubernetes is the Pulumi Kubernetes resource
// provider, built from its Go module at a pinned commit. The provider's own
// main package embeds two generated files that its module zip does not ship;
// tools/k8s/build.sh copies them beside this file in a scratch build
// directory, never into the repository.
package main

import (
	_ "embed"

	"github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/provider"
	"github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version"
)

//go:embed schema-embed.json
var schema []byte

//go:embed terraform-mapping-embed.json
var terraformMapping []byte

func main() {
	provider.Serve("kubernetes", version.Version, schema, terraformMapping)
}
