// Command caddy is the gateway's Caddy: the standard distribution plus the
// DNS-provider modules that wildcard certificates need, a rate limiter, and the
// gateway's own modules (./serveform: routing by Host without reloads, tokens,
// request counts for the scaler).
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddy-dns/azure"
	_ "github.com/caddy-dns/cloudflare"
	_ "github.com/caddy-dns/googleclouddns"
	_ "github.com/caddy-dns/route53"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/mholt/caddy-ratelimit"

	_ "serveform.dev/tools/caddy/serveform"
)

func main() {
	caddycmd.Main()
}
