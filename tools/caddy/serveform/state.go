// Package serveform holds the gateway's own Caddy modules: the per-request gate
// (host → service, bearer tokens, rate limits, request counting), the request-count
// exposition the scaler reads, the on-demand TLS `ask` answer and an admin endpoint
// that re-reads the gateway's tables.
//
// Everything that changes while a gateway runs — which services exist, their
// settings, the accepted tokens — lives in files of the gateway's state directory
// that this package reads, never in Caddy's config. So adding, removing or changing
// a service, or rotating a token, needs no config reload (a reload closes idle
// keep-alive connections and so fails requests racing with it), and the running
// config the admin API returns holds file paths, never a token.
package serveform

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
)

// routesDocument is the routes file the gateway's supervisor writes (0600).
type routesDocument struct {
	Generation int64  `json:"generation"`
	RouterHost string `json:"router_host"`
	HTTPSPort  int    `json:"https_port"`
	TLSOff     bool   `json:"tls_off"`
	// TokenHashesFile and SecretHashFile hold SHA-256 digests (hex) of the accepted bearer
	// tokens and of the per-gateway secret: no token or secret is ever in a file Caddy reads.
	TokenHashesFile string `json:"token_hashes_file"`
	SecretHashFile  string `json:"secret_hash_file"`
	// ReadyFile lists each service's ready replicas (readyDocument), for the `serveform`
	// upstream source; empty when replicas are found another way (`dynamic srv`).
	ReadyFile string         `json:"ready_file"`
	Services  []serviceEntry `json:"services"`
}

// readyDocument is the ready file the supervisor rewrites whenever its prober changes a
// service's ready set: `{"services": {"<name>": ["<ip>:<port>", ...]}}`.
type readyDocument struct {
	Services map[string][]string `json:"services"`
}

type serviceEntry struct {
	Name  string `json:"name"`
	Host  string `json:"host"`
	Auth  bool   `json:"auth"`
	HTTPS bool   `json:"https"`
	// SRV is the full SRV name of the service's replicas, `_<service>._tcp.<name>`, for
	// `dynamic srv`; empty when the ready file lists them.
	SRV        string      `json:"srv"`
	RateLimits []zoneEntry `json:"rate_limits"`
}

type zoneEntry struct {
	Zone          string `json:"zone"`
	Prefix        string `json:"prefix"`
	Key           string `json:"key"`
	Events        int    `json:"events"`
	WindowSeconds int    `json:"window_seconds"`
}

// serviceStats are a service's counters; they outlive table swaps and config reloads
// (the state is shared through a usage pool), so the scaler sees no reset.
type serviceStats struct {
	requests atomic.Uint64
	inFlight atomic.Int64
}

// readySet is a service's ready replicas (dial addresses); like the counters, it outlives
// table swaps, so a routes reload never empties it.
type readySet struct {
	dials atomic.Pointer[[]string]
}

func newReadySet() *readySet {
	r := &readySet{}
	r.dials.Store(&[]string{})
	return r
}

type route struct {
	entry serviceEntry
	stats *serviceStats
	ready *readySet
	zones []*zone
}

// table is one immutable snapshot of the routes file; requests read it without locks.
type table struct {
	generation int64
	routerHost string
	httpsPort  int
	tlsOff     bool
	byHost     map[string]*route
	order      []*route // the file's order, for a stable exposition
	tokens     [][sha256.Size]byte
	secret     *[sha256.Size]byte
	readyFile  string
}

// state is everything one gateway's modules share, keyed by its routes file.
type state struct {
	path  string
	mu    sync.Mutex // serialises reloads
	cur   atomic.Pointer[table]
	stats map[string]*serviceStats // guarded by mu
	ready map[string]*readySet     // guarded by mu
	fails *failLimiter
}

var states = caddy.NewUsagePool()

// acquire returns the shared state of a routes file, loading it on first use.
func acquire(path string) (*state, error) {
	value, _, err := states.LoadOrNew(path, func() (caddy.Destructor, error) {
		s := &state{path: path, stats: map[string]*serviceStats{}, ready: map[string]*readySet{}, fails: newFailLimiter()}
		if err := s.reload(); err != nil {
			return nil, err
		}
		return s, nil
	})
	if err != nil {
		return nil, err
	}
	return value.(*state), nil
}

func release(path string) { _, _ = states.Delete(path) }

// Destruct implements caddy.Destructor.
func (s *state) Destruct() error { return nil }

func readJSON(path string, into any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, into); err != nil {
		// Never echo the content: these files hold secrets.
		return fmt.Errorf("%s: not valid JSON of the expected shape", path)
	}
	return nil
}

// reload re-reads the routes, tokens and secret files; on any error the previous table stays.
func (s *state) reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var doc routesDocument
	if err := readJSON(s.path, &doc); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	} // no routes file yet (`caddy validate` of a fresh config): no service, no token, nothing passes
	t := &table{
		generation: doc.Generation,
		routerHost: strings.ToLower(doc.RouterHost),
		httpsPort:  doc.HTTPSPort,
		tlsOff:     doc.TLSOff,
		byHost:     make(map[string]*route, len(doc.Services)),
		readyFile:  doc.ReadyFile,
	}
	if doc.TokenHashesFile != "" {
		var hashes []string
		if err := readJSON(doc.TokenHashesFile, &hashes); err != nil {
			return err
		}
		for _, text := range hashes {
			sum, err := parseDigest(text)
			if err != nil {
				return fmt.Errorf("%s: %w", doc.TokenHashesFile, err)
			}
			t.tokens = append(t.tokens, sum)
		}
	}
	if doc.SecretHashFile != "" {
		data, err := os.ReadFile(doc.SecretHashFile)
		if err != nil {
			return err
		}
		sum, err := parseDigest(strings.TrimSpace(string(data)))
		if err != nil {
			return fmt.Errorf("%s: %w", doc.SecretHashFile, err)
		}
		t.secret = &sum
	}
	old := s.cur.Load()
	stats := make(map[string]*serviceStats, len(doc.Services))
	for _, entry := range doc.Services {
		entry.Host = strings.ToLower(entry.Host)
		if entry.Name == "" || entry.Host == "" {
			return fmt.Errorf("%s: every service needs a name and a host", s.path)
		}
		if _, dup := t.byHost[entry.Host]; dup {
			return fmt.Errorf("%s: host %s appears twice", s.path, entry.Host)
		}
		st := s.stats[entry.Name]
		if st == nil {
			st = &serviceStats{}
		}
		stats[entry.Name] = st
		rs := s.ready[entry.Name]
		if rs == nil {
			rs = newReadySet()
			s.ready[entry.Name] = rs
		}
		r := &route{entry: entry, stats: st, ready: rs}
		for _, z := range entry.RateLimits {
			if z.Events < 1 || z.WindowSeconds < 1 {
				return fmt.Errorf("%s: rate limit zone %s needs events and window_seconds >= 1", s.path, z.Zone)
			}
			r.zones = append(r.zones, reuseZone(old, entry.Name, z))
		}
		t.byHost[entry.Host] = r
		t.order = append(t.order, r)
	}
	s.stats = stats // counters of removed services are dropped: their series disappear
	for name := range s.ready {
		if _, kept := stats[name]; !kept {
			delete(s.ready, name)
		}
	}
	// The ready sets first, then the table: a new service is served with its replicas at once.
	if err := s.readReady(t.readyFile); err != nil {
		return err
	}
	s.cur.Store(t)
	return nil
}

// reloadReady re-reads the ready file only (the prober changed a ready set).
func (s *state) reloadReady() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.readReady(s.cur.Load().readyFile)
}

// readReady stores every service's ready replicas from the ready file; s.mu is held. A missing
// file is no replica ready yet. On a bad file nothing changes.
func (s *state) readReady(path string) error {
	if path == "" {
		return nil
	}
	var doc readyDocument
	if err := readJSON(path, &doc); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	for name, dials := range doc.Services {
		for _, dial := range dials {
			// Only `<ip>:<port>`: an address with a network prefix or a name would let the file
			// point the proxy at a unix socket or a lookup.
			host, port, err := net.SplitHostPort(dial)
			if err != nil || net.ParseIP(host) == nil || port == "" {
				return fmt.Errorf("%s: service %s: %q is not <ip>:<port>", path, name, dial)
			}
			if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
				return fmt.Errorf("%s: service %s: %q is not <ip>:<port>", path, name, dial)
			}
		}
	}
	for name, rs := range s.ready {
		dials := append([]string(nil), doc.Services[name]...)
		rs.dials.Store(&dials)
	}
	return nil
}

func parseDigest(text string) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	raw, err := hex.DecodeString(text)
	if err != nil || len(raw) != sha256.Size {
		return sum, fmt.Errorf("expected SHA-256 digests in hex")
	}
	copy(sum[:], raw)
	return sum, nil
}

// reuseZone keeps a zone's counts across a reload when its settings did not change.
func reuseZone(old *table, service string, z zoneEntry) *zone {
	if old != nil {
		for _, r := range old.order {
			if r.entry.Name != service {
				continue
			}
			for _, existing := range r.zones {
				if existing.entry == z {
					return existing
				}
			}
		}
	}
	return newZone(z)
}

// normaliseHost lower-cases a Host header and drops its port, allocating only when needed.
func normaliseHost(host string) string {
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.Contains(host[i:], "]") {
		host = host[:i]
	}
	host = strings.TrimSuffix(host, ".")
	for i := 0; i < len(host); i++ {
		if c := host[i]; c >= 'A' && c <= 'Z' {
			return strings.ToLower(host)
		}
	}
	return host
}

// reloadAllReady re-reads the ready file of every loaded state; used by the admin endpoint.
func reloadAllReady() error {
	var firstErr error
	states.Range(func(_, value any) bool {
		if err := value.(*state).reloadReady(); err != nil && firstErr == nil {
			firstErr = err
		}
		return true
	})
	return firstErr
}

// reloadAll re-reads every loaded state; used by the admin endpoint.
func reloadAll() (map[string]int64, error) {
	out := map[string]int64{}
	var firstErr error
	states.Range(func(key, value any) bool {
		s := value.(*state)
		if err := s.reload(); err != nil && firstErr == nil {
			firstErr = err
		}
		out[key.(string)] = s.cur.Load().generation
		return true
	})
	return out, firstErr
}
