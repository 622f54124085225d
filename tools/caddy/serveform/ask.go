package serveform

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(Ask{})
}

// Ask answers on-demand TLS's `ask` question (`?domain=<host>`): 200 for the HTTPS
// hosts the gateway serves right now and its router host, 404 otherwise. Certificates
// are then obtained at the first handshake of a new service, with no config reload.
type Ask struct {
	RoutesFile string `json:"routes_file"`

	state *state
}

// CaddyModule returns the Caddy module information.
func (Ask) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.serveform_ask", New: func() caddy.Module { return new(Ask) }}
}

// Provision joins the gateway's shared state.
func (a *Ask) Provision(ctx caddy.Context) error {
	if a.RoutesFile == "" {
		return fmt.Errorf("serveform_ask: routes_file is required")
	}
	s, err := acquire(a.RoutesFile)
	if err != nil {
		return fmt.Errorf("serveform_ask: %w", err)
	}
	a.state = s
	return nil
}

// Cleanup releases the shared state.
func (a *Ask) Cleanup() error {
	if a.state != nil {
		release(a.RoutesFile)
	}
	return nil
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (a *Ask) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	t := a.state.cur.Load()
	domain := strings.ToLower(r.URL.Query().Get("domain"))
	if rt := t.byHost[domain]; (rt != nil && rt.entry.HTTPS) || (domain != "" && domain == t.routerHost) {
		w.WriteHeader(http.StatusOK)
		return nil
	}
	w.WriteHeader(http.StatusNotFound)
	return nil
}

var (
	_ caddy.Provisioner           = (*Ask)(nil)
	_ caddy.CleanerUpper          = (*Ask)(nil)
	_ caddyhttp.MiddlewareHandler = (*Ask)(nil)
)
