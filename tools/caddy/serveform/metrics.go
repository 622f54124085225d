package serveform

import (
	"bufio"
	"fmt"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(Metrics{})
}

// Metrics serves the request counts per service in the Prometheus text format
// (version 0.0.4): one series per configured service and nothing else, so unknown
// Host headers can never grow the scrape.
//
//	serveform_requests_total{service,host}      counter: requests handed to the service
//	                                             (refused for auth or a rate limit: not counted)
//	serveform_requests_in_flight{service,host}  gauge: being handled now, held ones included
//	serveform_routes_generation                 generation of the routes file in use
//
// Counters keep counting across route changes and config reloads.
type Metrics struct {
	RoutesFile string `json:"routes_file"`
	// RequireToken makes the endpoint demand one of the stack's bearer tokens, for a
	// listener that is not on loopback (a scaler in another pod).
	RequireToken bool `json:"require_token,omitempty"`

	state *state
}

// CaddyModule returns the Caddy module information.
func (Metrics) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.serveform_metrics", New: func() caddy.Module { return new(Metrics) }}
}

// Provision joins the gateway's shared state.
func (m *Metrics) Provision(ctx caddy.Context) error {
	if m.RoutesFile == "" {
		return fmt.Errorf("serveform_metrics: routes_file is required")
	}
	s, err := acquire(m.RoutesFile)
	if err != nil {
		return fmt.Errorf("serveform_metrics: %w", err)
	}
	m.state = s
	return nil
}

// Cleanup releases the shared state.
func (m *Metrics) Cleanup() error {
	if m.state != nil {
		release(m.RoutesFile)
	}
	return nil
}

var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (m *Metrics) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	t := m.state.cur.Load()
	if m.RequireToken && !bearerOK(r, t.tokens) {
		return writeError(w, http.StatusUnauthorized, unauthorizedMessage, "invalid_request_error", "invalid_api_key")
	}
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	out := bufio.NewWriter(w)
	fmt.Fprintln(out, "# HELP serveform_requests_total Requests handed to a service (refusals for auth or rate limits excluded).")
	fmt.Fprintln(out, "# TYPE serveform_requests_total counter")
	for _, rt := range t.order {
		fmt.Fprintf(out, "serveform_requests_total{service=\"%s\",host=\"%s\"} %d\n",
			labelEscaper.Replace(rt.entry.Name), labelEscaper.Replace(rt.entry.Host), rt.stats.requests.Load())
	}
	fmt.Fprintln(out, "# HELP serveform_requests_in_flight Requests of a service being handled now, held ones included.")
	fmt.Fprintln(out, "# TYPE serveform_requests_in_flight gauge")
	for _, rt := range t.order {
		fmt.Fprintf(out, "serveform_requests_in_flight{service=\"%s\",host=\"%s\"} %d\n",
			labelEscaper.Replace(rt.entry.Name), labelEscaper.Replace(rt.entry.Host), rt.stats.inFlight.Load())
	}
	fmt.Fprintln(out, "# HELP serveform_routes_generation Generation of the routes file the gateway serves.")
	fmt.Fprintln(out, "# TYPE serveform_routes_generation gauge")
	fmt.Fprintf(out, "serveform_routes_generation %d\n", t.generation)
	return out.Flush()
}

var (
	_ caddy.Provisioner           = (*Metrics)(nil)
	_ caddy.CleanerUpper          = (*Metrics)(nil)
	_ caddyhttp.MiddlewareHandler = (*Metrics)(nil)
)
