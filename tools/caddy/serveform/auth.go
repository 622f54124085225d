package serveform

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// failedAuthLimit refused attempts per client and window: beyond it the client gets
	// 429 until the window ends, whatever it presents, so tokens cannot be guessed fast.
	failedAuthLimit  = 30
	failedAuthWindow = time.Minute
	// failClientsMax bounds the limiter's memory whatever the number of clients.
	failClientsMax = 65536
)

// bearerOK reports whether the request carries exactly one Authorization header with the
// Bearer scheme (any case, RFC 9110 §11.1) and one of the accepted tokens. The presented
// token is hashed and compared with every accepted hash in constant time, so the time
// taken says nothing about how much of a token matched or which one.
func bearerOK(r *http.Request, tokens [][sha256.Size]byte) bool {
	values := r.Header["Authorization"]
	if len(values) != 1 {
		return false // none, or duplicates: refused the same way on every host
	}
	scheme, token, found := strings.Cut(values[0], " ")
	if !found || !strings.EqualFold(scheme, "bearer") {
		return false
	}
	token = strings.Trim(token, " \t")
	if token == "" {
		return false
	}
	sum := digest(token)
	match := 0
	for i := range tokens {
		match |= subtle.ConstantTimeCompare(sum[:], tokens[i][:])
	}
	return match == 1
}

// secretOK checks the per-gateway secret header only the router holds.
func secretOK(r *http.Request, secret *[sha256.Size]byte) bool {
	values := r.Header[secretHeader]
	if secret == nil || len(values) != 1 {
		return false
	}
	sum := digest(values[0])
	return subtle.ConstantTimeCompare(sum[:], secret[:]) == 1
}

// tokenBufferBytes covers every token the gateway issues or accepts in practice; a longer one is
// hashed all the same, with one allocation.
const tokenBufferBytes = 256

// digest is SHA-256 of a header value without allocating for it: Go copies a string into a heap
// []byte when it is longer than 32 bytes, and tokens are longer.
func digest(value string) [sha256.Size]byte {
	if len(value) > tokenBufferBytes {
		return sha256.Sum256([]byte(value))
	}
	var buf [tokenBufferBytes]byte
	n := copy(buf[:], value)
	return sha256.Sum256(buf[:n])
}

type failCount struct {
	start time.Time
	count int
}

// failLimiter counts refused attempts per client in fixed windows.
type failLimiter struct {
	mu      sync.Mutex
	clients map[string]*failCount
	// blockedUntil (unix ns) is when the last client over its budget is let go: while it is in
	// the past, a request with a good token needs neither the lock nor its client's address.
	blockedUntil atomic.Int64
}

// anyBlocked is the lock-free fast path: false when no client can be over its budget now. Until
// a first client is blocked it does not even read the clock.
func (l *failLimiter) anyBlocked() (bool, time.Time) {
	until := l.blockedUntil.Load()
	if until == 0 {
		return false, time.Time{}
	}
	now := time.Now()
	return now.UnixNano() < until, now
}

func newFailLimiter() *failLimiter { return &failLimiter{clients: map[string]*failCount{}} }

// blocked reports whether the client has used up its failures for this window.
func (l *failLimiter) blocked(client string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.clients[client]
	return c != nil && now.Sub(c.start) < failedAuthWindow && c.count >= failedAuthLimit
}

func (l *failLimiter) fail(client string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.clients[client]
	if c == nil || now.Sub(c.start) >= failedAuthWindow {
		if c == nil && len(l.clients) >= failClientsMax {
			l.prune(now)
			if len(l.clients) >= failClientsMax {
				// Every slot is a client failing right now: forget the oldest half rather than grow.
				for key := range l.clients {
					delete(l.clients, key)
					if len(l.clients) < failClientsMax/2 {
						break
					}
				}
			}
		}
		c = &failCount{start: now}
		l.clients[client] = c
	}
	c.count++
	if c.count >= failedAuthLimit {
		if until := c.start.Add(failedAuthWindow).UnixNano(); until > l.blockedUntil.Load() {
			l.blockedUntil.Store(until)
		}
	}
}

func (l *failLimiter) prune(now time.Time) {
	for key, c := range l.clients {
		if now.Sub(c.start) >= failedAuthWindow {
			delete(l.clients, key)
		}
	}
}
