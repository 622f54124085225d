package serveform

// Tests of the gateway's module without a running Caddy (tests/gateway/test_caddy_module.py
// runs them); the benchmarks measure the module's own cost per request:
//
//	go test -run '^$' -bench . ./serveform/

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

const testToken = "test-token-0123456789abcdef0123456789abcdef"

// gateway writes a routes file (an open and a token-protected service, plain HTTP, TLS on
// elsewhere) with its token digests and ready file; it returns the shared state and the dir.
func gateway(t testing.TB, ready string) (*state, string) {
	t.Helper()
	dir := t.TempDir()
	sum := sha256.Sum256([]byte(testToken))
	hashes, _ := json.Marshal([]string{hex.EncodeToString(sum[:])})
	write(t, filepath.Join(dir, "token_hashes.json"), string(hashes))
	write(t, filepath.Join(dir, "ready.json"), ready)
	doc := map[string]any{
		"generation": 1, "router_host": "gateway.localhost", "https_port": 8443, "tls_off": false,
		"token_hashes_file": filepath.Join(dir, "token_hashes.json"), "ready_file": filepath.Join(dir, "ready.json"),
		"services": []map[string]any{
			{"name": "open", "host": "open.localhost", "auth": false, "https": false},
			{"name": "auth", "host": "auth.localhost", "auth": true, "https": false},
			{"name": "secure", "host": "secure.localhost", "auth": true, "https": true},
		},
	}
	data, _ := json.Marshal(doc)
	path := filepath.Join(dir, "routes.json")
	write(t, path, string(data))
	s, err := acquire(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { release(path) })
	return s, dir
}

func write(t testing.TB, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

func request(host string, headers map[string]string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "http://"+host+"/v1/x?y=1", nil)
	for k, v := range headers {
		r.Header.Set(k, v)
	}
	ctx := context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer())
	ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: "192.0.2.1"})
	return r.WithContext(ctx)
}

type recordNext struct{ calls int }

func (n *recordNext) ServeHTTP(http.ResponseWriter, *http.Request) error { n.calls++; return nil }

func dialsOf(t *testing.T, u *Upstreams, r *http.Request) []string {
	t.Helper()
	ups, err := u.GetUpstreams(r)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, up := range ups {
		out = append(out, up.Dial)
	}
	return out
}

func TestUpstreamsServeTheReadySetOfTheHostsService(t *testing.T) {
	s, dir := gateway(t, `{"services": {"open": ["127.0.0.1:8001", "[::1]:8002"], "auth": []}}`)
	u := &Upstreams{state: s}
	if got := strings.Join(dialsOf(t, u, request("OPEN.localhost:80", nil)), ","); got != "127.0.0.1:8001,[::1]:8002" {
		t.Fatalf("open: %s", got)
	}
	if got := dialsOf(t, u, request("auth.localhost", nil)); len(got) != 0 {
		t.Fatalf("auth has no ready replica, got %v", got)
	}
	if got := dialsOf(t, u, request("unknown.localhost", nil)); len(got) != 0 {
		t.Fatalf("unknown host: %v", got)
	}
	// The prober drops one: after the re-read, it is out of every choice.
	write(t, filepath.Join(dir, "ready.json"), `{"services": {"open": ["[::1]:8002"], "auth": ["127.0.0.1:9"]}}`)
	if err := reloadAllReady(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(dialsOf(t, u, request("open.localhost", nil)), ","); got != "[::1]:8002" {
		t.Fatalf("after the change: %s", got)
	}
	// Every call gets Upstreams of its own: reverse_proxy writes into them.
	a, _ := u.GetUpstreams(request("open.localhost", nil))
	b, _ := u.GetUpstreams(request("open.localhost", nil))
	if a[0] == b[0] {
		t.Fatal("two requests share an Upstream")
	}
}

func TestReadyFileAcceptsOnlyIPAndPort(t *testing.T) {
	for _, bad := range []string{"unix//tmp/x.sock", "replica.internal:80", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", "tcp/127.0.0.1:80"} {
		s, dir := gateway(t, `{"services": {"open": ["127.0.0.1:8001"]}}`)
		write(t, filepath.Join(dir, "ready.json"), `{"services": {"open": ["`+bad+`"]}}`)
		if err := s.reloadReady(); err == nil {
			t.Errorf("%q accepted", bad)
		}
		// A refused file changes nothing.
		if got := *s.cur.Load().byHost["open.localhost"].ready.dials.Load(); len(got) != 1 || got[0] != "127.0.0.1:8001" {
			t.Errorf("%q: ready set became %v", bad, got)
		}
	}
}

func TestReadySetsOutliveRouteReloads(t *testing.T) {
	s, _ := gateway(t, `{"services": {"open": ["127.0.0.1:8001"]}}`)
	if err := s.reload(); err != nil {
		t.Fatal(err)
	}
	if got := *s.cur.Load().byHost["open.localhost"].ready.dials.Load(); len(got) != 1 {
		t.Fatalf("after a routes reload: %v", got)
	}
}

func TestGateTokensAndRedirects(t *testing.T) {
	s, _ := gateway(t, `{"services": {}}`)
	g := &Gate{Role: roleServiceHTTP, state: s}
	cases := []struct {
		host, auth string
		status     int
		location   string
	}{
		{"open.localhost", "", 200, ""},
		{"auth.localhost", "Bearer " + testToken, 200, ""},
		{"auth.localhost", "bearer  " + testToken + " ", 200, ""},
		{"auth.localhost", "Bearer " + testToken + "x", 401, ""},
		{"auth.localhost", "", 401, ""},
		{"nowhere.localhost", "Bearer " + testToken, 404, ""},
		{"secure.localhost", "", 308, "https://secure.localhost:8443/v1/x?y=1"},
		{"gateway.localhost", "", 308, "https://gateway.localhost:8443/v1/x?y=1"},
	}
	for _, c := range cases {
		next := &recordNext{}
		w := httptest.NewRecorder()
		r := request(c.host, map[string]string{"Authorization": c.auth})
		if c.auth == "" {
			r.Header.Del("Authorization")
		}
		if err := g.ServeHTTP(w, r, next); err != nil {
			t.Fatal(err)
		}
		status := w.Code
		if next.calls == 1 {
			status = 200
			if r.Header.Get("Authorization") != "" && c.host == "auth.localhost" {
				t.Errorf("%s: the token reached the replica", c.host)
			}
		}
		if status != c.status || w.Header().Get("Location") != c.location {
			t.Errorf("%s %q: %d %q, expected %d %q", c.host, c.auth, status, w.Header().Get("Location"), c.status, c.location)
		}
	}
	if got := s.cur.Load().byHost["auth.localhost"].stats.requests.Load(); got != 2 {
		t.Errorf("auth counted %d requests, expected the 2 let through", got)
	}
}

func benchGate(b *testing.B, host string, token bool) {
	s, _ := gateway(b, `{"services": {"open": ["127.0.0.1:1", "127.0.0.1:2"], "auth": ["127.0.0.1:1", "127.0.0.1:2"]}}`)
	g := &Gate{Role: roleServiceHTTP, state: s}
	u := &Upstreams{state: s}
	r := request(host, nil)
	header := []string{"Bearer " + testToken}
	w := httptest.NewRecorder()
	next := &recordNext{}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if token {
			r.Header["Authorization"] = header
		}
		if err := g.ServeHTTP(w, r, next); err != nil {
			b.Fatal(err)
		}
		if ups, _ := u.GetUpstreams(r); len(ups) != 2 {
			b.Fatal("no upstreams")
		}
	}
}

// BenchmarkGateOpen: host routing, counting and the replica list of one request.
func BenchmarkGateOpen(b *testing.B) { benchGate(b, "open.localhost", false) }

// BenchmarkGateToken: the same with the bearer-token check.
func BenchmarkGateToken(b *testing.B) { benchGate(b, "auth.localhost", true) }
