package serveform

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(Gate{})
}

// secretHeader carries the per-gateway secret from the router to the internal listener.
const secretHeader = "X-Serveform-Gateway-Secret"

// placeholderSRV is the one placeholder the gate sets: the SRV name reverse_proxy's `dynamic srv`
// looks up. One only: each Set is a map insert in the request's replacer, and a few more make
// that map grow on every request (measured in bench/gateway.py's breakdown).
const placeholderSRV = "serveform.srv"

// Roles of a gate, one per kind of listener.
const (
	roleService     = "service"      // HTTPS listener: `<service>.<domain>`
	roleServiceHTTP = "service_http" // plain-HTTP listener: services with https off; the rest redirect
	roleRouter      = "router"       // `gateway.<domain>`: the token, then the OpenAI router
	roleInternal    = "internal"     // loopback listener the router calls: the gateway secret
)

// Gate is the gateway's per-request decision, in front of reverse_proxy:
// which service a Host names (unknown hosts get 404 and create no series),
// whether the caller may use it (bearer token, or the router's gateway secret),
// the service's rate limits, and the request counts the scaler reads.
type Gate struct {
	// Role is service, service_http, router or internal.
	Role string `json:"role"`
	// RoutesFile is the gateway's routes file (0600), re-read on the admin
	// endpoint POST /serveform/reload.
	RoutesFile string `json:"routes_file"`

	state *state
}

// CaddyModule returns the Caddy module information.
func (Gate) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.serveform_gate", New: func() caddy.Module { return new(Gate) }}
}

// Provision loads (or joins) the gateway's shared state.
func (g *Gate) Provision(ctx caddy.Context) error {
	switch g.Role {
	case roleService, roleServiceHTTP, roleRouter, roleInternal:
	default:
		return fmt.Errorf("serveform_gate: role %q: expected service, service_http, router or internal", g.Role)
	}
	if g.RoutesFile == "" {
		return fmt.Errorf("serveform_gate: routes_file is required")
	}
	s, err := acquire(g.RoutesFile)
	if err != nil {
		return fmt.Errorf("serveform_gate: %w", err)
	}
	g.state = s
	return nil
}

// Cleanup releases the shared state.
func (g *Gate) Cleanup() error {
	if g.state != nil {
		release(g.RoutesFile)
	}
	return nil
}

func writeError(w http.ResponseWriter, status int, message, kind, code string) error {
	w.Header().Set("Content-Type", "application/json")
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="serveform"`)
	}
	w.WriteHeader(status)
	_, err := fmt.Fprintf(w, `{"error": {"message": %s, "type": %q, "param": null, "code": %q}}`, strconv.Quote(message), kind, code)
	return err
}

const unauthorizedMessage = "Missing or invalid bearer token. Pass 'Authorization: Bearer <token>'."

// authorize checks the token with the per-client failure budget; it answers refusals itself.
func (g *Gate) authorize(w http.ResponseWriter, r *http.Request, t *table, cors bool) (bool, error) {
	var client string
	if blocked, now := g.state.fails.anyBlocked(); !blocked {
		// The common case: no client is over its budget, so no lock and no address lookup.
		if bearerOK(r, t.tokens) {
			return true, nil
		}
		client, _ = caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
	} else {
		client, _ = caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
		if g.state.fails.blocked(client, now) {
			if cors {
				w.Header().Set("Access-Control-Allow-Origin", "*")
			}
			return false, writeError(w, http.StatusTooManyRequests, "too many failed authentication attempts; retry later", "rate_limit_error", "rate_limit_exceeded")
		}
		if bearerOK(r, t.tokens) {
			return true, nil
		}
	}
	g.state.fails.fail(client, time.Now())
	if cors {
		// The router adds CORS headers to its own answers; refusals need them too so browsers can read them.
		w.Header().Set("Access-Control-Allow-Origin", "*")
	}
	return false, writeError(w, http.StatusUnauthorized, unauthorizedMessage, "invalid_request_error", "invalid_api_key")
}

// redirectHTTPS answers a plain-HTTP request for an HTTPS host with a permanent redirect.
func redirectHTTPS(w http.ResponseWriter, r *http.Request, t *table, host string) error {
	target := "https://" + host
	if t.httpsPort != 0 && t.httpsPort != 443 {
		target += ":" + strconv.Itoa(t.httpsPort)
	}
	http.Redirect(w, r, target+r.URL.RequestURI(), http.StatusPermanentRedirect)
	return nil
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (g *Gate) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	t := g.state.cur.Load()
	if g.Role == roleRouter {
		// Browsers send CORS preflights without credentials; the router answers them.
		if r.Method != http.MethodOptions {
			if ok, err := g.authorize(w, r, t, true); !ok {
				return err
			}
		}
		return next.ServeHTTP(w, r)
	}
	if g.Role == roleInternal {
		if !secretOK(r, t.secret) {
			return writeError(w, http.StatusUnauthorized, "this listener serves the gateway's router only", "invalid_request_error", "invalid_api_key")
		}
		r.Header.Del(secretHeader)
	}
	host := normaliseHost(r.Host)
	rt := t.byHost[host]
	if rt == nil {
		if g.Role == roleServiceHTTP && host == t.routerHost && host != "" && !t.tlsOff {
			// Caddy's own redirects are off (they would cost every request a host match).
			return redirectHTTPS(w, r, t, t.routerHost)
		}
		return writeError(w, http.StatusNotFound, "no such service", "invalid_request_error", "unknown_host")
	}
	if g.Role == roleServiceHTTP && rt.entry.HTTPS && !t.tlsOff {
		return redirectHTTPS(w, r, t, rt.entry.Host)
	}
	if g.Role == roleService && !rt.entry.HTTPS {
		return writeError(w, http.StatusNotFound, "this service is served over plain HTTP only", "invalid_request_error", "unknown_host")
	}
	if rt.entry.Auth && g.Role != roleInternal {
		if ok, err := g.authorize(w, r, t, false); !ok {
			return err
		}
		// The stack's bearer token is not the replica's business.
		r.Header.Del("Authorization")
	}
	if len(rt.zones) > 0 {
		repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		now := time.Now()
		for _, z := range rt.zones {
			if strings.HasPrefix(r.URL.Path, z.entry.Prefix) && !z.allow(repl.ReplaceAll(z.entry.Key, ""), now) {
				return writeError(w, http.StatusTooManyRequests, "rate limit exceeded", "rate_limit_error", "rate_limit_exceeded")
			}
		}
	}
	if rt.entry.SRV != "" {
		// `dynamic srv` (replicas in another DNS); the `serveform` source needs nothing set.
		r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer).Set(placeholderSRV, rt.entry.SRV)
	}
	stats := rt.stats
	stats.inFlight.Add(1)
	err := next.ServeHTTP(w, r)
	stats.inFlight.Add(-1)
	stats.requests.Add(1)
	return err
}

var (
	_ caddy.Provisioner           = (*Gate)(nil)
	_ caddy.CleanerUpper          = (*Gate)(nil)
	_ caddyhttp.MiddlewareHandler = (*Gate)(nil)
)
