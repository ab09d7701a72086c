package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Command events: GET /v1/commands/events is a server-sent-events stream of
// command state changes, each {"id", "device_id", "state", "at"}, limited
// to the caller's fleets (and to one device with ?device=). Events are
// those of the changes every replica makes: this one's as it makes them,
// the others' through PostgreSQL notifications (commands_notify.go). A
// client that cannot keep up (1,024 events behind), or whose replica
// stopped hearing the others for a while (streams open at the time, and
// those opened meanwhile once it hears them again), gets an "overflow"
// event and the end of the stream: it lists what it missed and reconnects.

// CommandEvent is one event of the stream.
type CommandEvent struct {
	ID       string    `json:"id"`
	DeviceID string    `json:"device_id"`
	State    string    `json:"state"`
	At       time.Time `json:"at"`
	// Progress and Bytes are a device's progress report (a delivered
	// command still running: downloading with bytes, verifying,
	// installing).
	Progress string `json:"progress,omitempty"`
	Bytes    int64  `json:"bytes,omitempty"`
}

// eventSub is one stream.
type eventSub struct {
	p        *principal
	device   string
	ch       chan CommandEvent
	overflow chan struct{} // closed when the subscriber fell behind
	once     sync.Once
	// deaf: opened while this replica did not hear the others (PostgreSQL,
	// its listening connection down): it may miss their events from its
	// start, so it ends with overflow once the replica hears them again.
	deaf bool
}

// eventBus fans events out to the streams. publish never blocks a
// request: events go to one goroutine, which resolves each device's fleet
// (read at the time of the event, never cached: a device that moved must
// not show in its old fleet's stream) and delivers.
type eventBus struct {
	s    *Server
	in   chan []CommandEvent
	mu   sync.Mutex
	subs map[*eventSub]struct{}
}

const (
	eventBuffer   = 1024
	eventBusQueue = 1024
)

func newEventBus(s *Server) *eventBus {
	return &eventBus{s: s, in: make(chan []CommandEvent, eventBusQueue), subs: map[*eventSub]struct{}{}}
}

// publish hands events of this replica's changes to the bus, after their
// commit; with no stream open it costs a lock. While the replica listens
// to the notifications of every replica (PostgreSQL), it publishes its own
// changes from them instead, so that every replica's streams carry every
// replica's events in one order, the database's commit order (a
// replica's own queued after another's sent of the same command would
// otherwise be possible).
func (b *eventBus) publish(evs ...CommandEvent) {
	if b.s.listening.Load() {
		return
	}
	b.publishNow(evs...)
}

// publishNow hands events to the bus.
func (b *eventBus) publishNow(evs ...CommandEvent) {
	if len(evs) == 0 {
		return
	}
	b.mu.Lock()
	n := len(b.subs)
	b.mu.Unlock()
	if n == 0 {
		return
	}
	select {
	case b.in <- evs:
	default:
		// The bus itself is behind: every stream may miss events; say so.
		b.mu.Lock()
		for sub := range b.subs {
			sub.once.Do(func() { close(sub.overflow) })
		}
		b.mu.Unlock()
	}
}

// run delivers events until ctx ends.
func (b *eventBus) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case evs := <-b.in:
			fleets, err := b.fleetsOf(ctx, evs)
			if err != nil {
				if ctx.Err() == nil {
					b.s.log.Error("api: command events: read fleets", "err", err)
				}
				continue
			}
			b.mu.Lock()
			for sub := range b.subs {
				for _, ev := range evs {
					if (sub.device != "" && ev.DeviceID != sub.device) || !sub.p.sees(fleets[ev.DeviceID]) {
						continue
					}
					select {
					case sub.ch <- ev:
					default:
						sub.once.Do(func() { close(sub.overflow) })
					}
				}
			}
			b.mu.Unlock()
		}
	}
}

// fleetsOf reads the current fleet of the events' devices.
func (b *eventBus) fleetsOf(ctx context.Context, evs []CommandEvent) (map[string]string, error) {
	seen := map[string]bool{}
	var ids []any
	for _, ev := range evs {
		if !seen[ev.DeviceID] {
			seen[ev.DeviceID] = true
			ids = append(ids, ev.DeviceID)
		}
	}
	out := map[string]string{}
	for len(ids) > 0 {
		n := min(len(ids), 500)
		rows, err := b.s.db.rdb.QueryContext(ctx, `SELECT id, COALESCE(fleet, '') FROM devices WHERE id IN (`+placeholders(1, n)+`)`, ids[:n]...)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var id, fleet string
			if err := rows.Scan(&id, &fleet); err != nil {
				rows.Close()
				return nil, err
			}
			out[id] = fleet
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
		ids = ids[n:]
	}
	return out, nil
}

// overflowAll ends every stream with an overflow event: events may have
// been missed (this replica stopped hearing the other replicas').
func (b *eventBus) overflowAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for sub := range b.subs {
		sub.once.Do(func() { close(sub.overflow) })
	}
}

// overflowDeaf ends with an overflow event every stream opened while this
// replica was not listening: the other replicas' events of that time never
// reached it. Called once the replica listens again.
func (b *eventBus) overflowDeaf() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for sub := range b.subs {
		if sub.deaf {
			sub.once.Do(func() { close(sub.overflow) })
		}
	}
}

func (b *eventBus) subscribe(p *principal, device string) (*eventSub, func()) {
	sub := &eventSub{p: p, device: device, ch: make(chan CommandEvent, eventBuffer), overflow: make(chan struct{}),
		deaf: b.s.db.driver == DriverPostgres && !b.s.listening.Load()}
	b.mu.Lock()
	b.subs[sub] = struct{}{}
	b.mu.Unlock()
	return sub, func() {
		b.mu.Lock()
		delete(b.subs, sub)
		b.mu.Unlock()
	}
}

// commandEvents answers GET /v1/commands/events[?device=][&max_events=N][&duration=D]:
// the stream; max_events and duration end it (for scripts and tests).
func (s *Server) commandEvents(w http.ResponseWriter, r *http.Request, p *principal) error {
	q := r.URL.Query()
	device := q.Get("device")
	ctx := r.Context()
	if device != "" {
		if _, err := loadDevice(ctx, s.db.rdb, p, device); err != nil {
			return err
		}
	}
	maxEvents := 0
	if v := q.Get("max_events"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return errBadRequest("max_events: %q, want a number > 0", v)
		}
		maxEvents = n
	}
	var end <-chan time.Time
	if v := q.Get("duration"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return errBadRequest("duration: %q, want a duration such as 30s", v)
		}
		t := time.NewTimer(d)
		defer t.Stop()
		end = t.C
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		return fmt.Errorf("command events: the response cannot stream")
	}
	sub, unsubscribe := s.events.subscribe(p, device)
	defer unsubscribe()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no") // a proxy (nginx) passes each event on at once
	w.WriteHeader(http.StatusOK)
	_, _ = fmt.Fprint(w, ": command events\n\n")
	flusher.Flush()
	heartbeat := time.NewTicker(15 * time.Second)
	defer heartbeat.Stop()
	sent := 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-end:
			return nil
		case <-sub.overflow:
			_, _ = fmt.Fprint(w, "event: overflow\ndata: {}\n\n")
			flusher.Flush()
			return nil
		case <-heartbeat.C:
			_, _ = fmt.Fprint(w, ": keepalive\n\n")
			flusher.Flush()
		case ev := <-sub.ch:
			b, _ := json.Marshal(ev)
			if _, err := fmt.Fprintf(w, "event: command\ndata: %s\n\n", b); err != nil {
				return nil
			}
			flusher.Flush()
			sent++
			if maxEvents > 0 && sent >= maxEvents {
				return nil
			}
		}
	}
}
