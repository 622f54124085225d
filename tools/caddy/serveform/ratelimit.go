package serveform

import (
	"sync"
	"time"
)

// zoneKeysMax bounds one zone's memory whatever the number of distinct keys.
const zoneKeysMax = 100000

type window struct {
	start     int64 // index of the current fixed window
	cur, prev int
}

// zone is one of a service's rate limits: at most `events` per sliding `window_seconds`
// per key, estimated from the current and previous fixed windows (the previous one
// weighted by how much of it the sliding window still covers).
type zone struct {
	entry zoneEntry
	mu    sync.Mutex
	keys  map[string]*window
}

func newZone(z zoneEntry) *zone { return &zone{entry: z, keys: map[string]*window{}} }

func (z *zone) allow(key string, now time.Time) bool {
	size := int64(z.entry.WindowSeconds) * int64(time.Second)
	ns := now.UnixNano()
	index := ns / size
	z.mu.Lock()
	defer z.mu.Unlock()
	w := z.keys[key]
	if w == nil {
		if len(z.keys) >= zoneKeysMax {
			for k, old := range z.keys {
				if old.start < index-1 {
					delete(z.keys, k)
				}
			}
			if len(z.keys) >= zoneKeysMax {
				z.keys = map[string]*window{}
			}
		}
		w = &window{start: index}
		z.keys[key] = w
	}
	switch {
	case w.start == index-1:
		w.prev, w.cur, w.start = w.cur, 0, index
	case w.start < index-1:
		w.prev, w.cur, w.start = 0, 0, index
	}
	elapsed := float64(ns-index*size) / float64(size)
	estimate := float64(w.prev)*(1-elapsed) + float64(w.cur)
	if estimate >= float64(z.entry.Events) {
		return false
	}
	w.cur++
	return true
}
