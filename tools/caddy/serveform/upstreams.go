package serveform

import (
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func init() {
	caddy.RegisterModule(Upstreams{})
}

// Upstreams is reverse_proxy's source of replicas (`dynamic serveform`): the ready replicas of
// the service the request's Host names, as the gateway's prober last reported them (the ready
// file, re-read on POST /serveform/ready). A replica the prober marks not ready is out of every
// request's choice as soon as Caddy has re-read that file.
//
// It replaces a `dynamic srv` lookup through the gateway's DNS responder: that one costs, on every
// request, a placeholder set by the gate (a map insert that grows the request's replacer), the
// expansion of the SRV name, a read-locked cache look-up, and it lets a replica the prober
// dropped be chosen until the cache expires. Here it is one map look-up and an atomic load.
type Upstreams struct {
	// RoutesFile is the gateway's routes file; it names the ready file.
	RoutesFile string `json:"routes_file"`

	state *state
}

// CaddyModule returns the Caddy module information.
func (Upstreams) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.reverse_proxy.upstreams.serveform", New: func() caddy.Module { return new(Upstreams) }}
}

// Provision joins the gateway's shared state.
func (u *Upstreams) Provision(ctx caddy.Context) error {
	if u.RoutesFile == "" {
		return fmt.Errorf("serveform upstreams: routes_file is required")
	}
	s, err := acquire(u.RoutesFile)
	if err != nil {
		return fmt.Errorf("serveform upstreams: %w", err)
	}
	u.state = s
	return nil
}

// Cleanup releases the shared state.
func (u *Upstreams) Cleanup() error {
	if u.state != nil {
		release(u.RoutesFile)
	}
	return nil
}

// GetUpstreams implements reverseproxy.UpstreamSource. No ready replica (or a Host the routes no
// longer have) is an empty list, not an error: reverse_proxy then retries until lb_try_duration,
// so a request that arrives before the first replica is ready waits for it.
func (u *Upstreams) GetUpstreams(r *http.Request) ([]*reverseproxy.Upstream, error) {
	rt := u.state.cur.Load().byHost[normaliseHost(r.Host)]
	if rt == nil {
		return nil, nil
	}
	return fresh(*rt.ready.dials.Load()), nil
}

// fresh returns new Upstreams for dials, every time: reverse_proxy writes into each Upstream it
// is given (its host record, circuit breaker), so a shared one would be written by concurrent
// requests. A service's few replicas take one small allocation, sized to fit.
func fresh(dials []string) []*reverseproxy.Upstream {
	var values []reverseproxy.Upstream
	var out []*reverseproxy.Upstream
	switch n := len(dials); {
	case n == 0:
		return nil
	case n <= 2:
		p := new(struct {
			values   [2]reverseproxy.Upstream
			pointers [2]*reverseproxy.Upstream
		})
		values, out = p.values[:n], p.pointers[:n]
	case n <= 4:
		p := new(struct {
			values   [4]reverseproxy.Upstream
			pointers [4]*reverseproxy.Upstream
		})
		values, out = p.values[:n], p.pointers[:n]
	default:
		values, out = make([]reverseproxy.Upstream, n), make([]*reverseproxy.Upstream, n)
	}
	for i, dial := range dials {
		values[i].Dial = dial
		out[i] = &values[i]
	}
	return out
}

var (
	_ caddy.Provisioner           = (*Upstreams)(nil)
	_ caddy.CleanerUpper          = (*Upstreams)(nil)
	_ reverseproxy.UpstreamSource = (*Upstreams)(nil)
)
