package serveform

import (
	"strconv"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// The Caddyfile syntax, kept apart from the runtime code:
//
//	serveform_gate <role> { routes_file <path> }
//	serveform_metrics { routes_file <path>; require_token [true|false] }
//	serveform_ask { routes_file <path> }
//	reverse_proxy { dynamic serveform { routes_file <path> } }
//
// serveform_gate has a place in Caddy's directive order, just before reverse_proxy, so a site
// lists it beside reverse_proxy with no `route` block: a `route` block is a subroute, which
// compiles its handler chain again on every request (allocations measured in
// bench/gateway.py's breakdown). serveform_metrics and serveform_ask go inside `route`
// blocks, off the proxied path.
func init() {
	httpcaddyfile.RegisterDirectiveOrder("serveform_gate", httpcaddyfile.Before, "reverse_proxy")
	httpcaddyfile.RegisterHandlerDirective("serveform_gate", parseGate)
	httpcaddyfile.RegisterHandlerDirective("serveform_metrics", parseMetrics)
	httpcaddyfile.RegisterHandlerDirective("serveform_ask", parseAsk)
}

func parseBlock(d *caddyfile.Dispenser, routesFile *string, requireToken *bool) error {
	for d.NextBlock(0) {
		switch d.Val() {
		case "routes_file":
			if !d.NextArg() {
				return d.ArgErr()
			}
			*routesFile = d.Val()
		case "require_token":
			if requireToken == nil {
				return d.Errf("unknown subdirective %q", d.Val())
			}
			*requireToken = true
			if d.NextArg() {
				value, err := strconv.ParseBool(d.Val())
				if err != nil {
					return d.Errf("require_token: %v", err)
				}
				*requireToken = value
			}
		default:
			return d.Errf("unknown subdirective %q", d.Val())
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}

func parseGate(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	g := new(Gate)
	h.Next()
	if !h.NextArg() {
		return nil, h.ArgErr()
	}
	g.Role = h.Val()
	if h.NextArg() {
		return nil, h.ArgErr()
	}
	return g, parseBlock(h.Dispenser, &g.RoutesFile, nil)
}

func parseMetrics(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Metrics)
	h.Next()
	if h.NextArg() {
		return nil, h.ArgErr()
	}
	return m, parseBlock(h.Dispenser, &m.RoutesFile, &m.RequireToken)
}

// UnmarshalCaddyfile reads `dynamic serveform { routes_file <path> }` inside reverse_proxy.
func (u *Upstreams) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the source's name
	if d.NextArg() {
		return d.ArgErr()
	}
	return parseBlock(d, &u.RoutesFile, nil)
}

var _ caddyfile.Unmarshaler = (*Upstreams)(nil)

func parseAsk(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	a := new(Ask)
	h.Next()
	if h.NextArg() {
		return nil, h.ArgErr()
	}
	return a, parseBlock(h.Dispenser, &a.RoutesFile, nil)
}
