package livefeed

// A client's side of the conversation: its reads, the protocol messages, subscriptions.

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/gorilla/websocket"
)

// readLoop reads the client's messages until the connection ends.
func (c *client) readLoop() {
	defer close(c.readDone)
	c.ws.SetReadLimit(maxClientMessage)
	c.extend()
	c.ws.SetPongHandler(func(string) error { c.extend(); return nil })
	for {
		_, r, err := c.ws.NextReader()
		if err != nil {
			c.readFailed(err)
			return
		}
		// SetReadLimit bounds the bytes on the wire; with
		// permessage-deflate (-compression) a small message can inflate
		// without bound, so the inflated bytes are bounded too.
		data, err := io.ReadAll(io.LimitReader(r, maxClientMessage+1))
		if err != nil {
			c.readFailed(err)
			return
		}
		if len(data) > maxClientMessage {
			c.log(slog.LevelInfo, "livefeed: client message over the size limit once inflated; closing 1009", "limit_bytes", maxClientMessage)
			c.kill(websocket.CloseMessageTooBig, "message too big", reasonTooBig)
			return
		}
		c.extend()
		c.handle(data)
	}
}

func (c *client) extend() {
	_ = c.ws.SetReadDeadline(time.Now().Add(c.f.cfg.IdleTimeout))
}

// readFailed ends the connection after a failed read.
func (c *client) readFailed(err error) {
	var ne net.Error
	switch {
	case errors.Is(err, websocket.ErrReadLimit):
		// gorilla has sent 1009.
		c.log(slog.LevelInfo, "livefeed: client message over the size limit; closed 1009", "limit_bytes", maxClientMessage)
		c.kill(0, "", reasonTooBig)
	case errors.As(err, &ne) && ne.Timeout():
		c.kill(CloseIdleTimeout, "idle timeout", reasonIdle)
	default:
		// The client closed (gorilla has answered its close frame), or
		// the connection broke, or the writer closed it.
		c.kill(0, "", reasonClientClosed)
	}
}

// Messages clients send and receive (docs/live-api.md). Updates and
// snapshots are written by hand (see appendUpdate) for speed.
type (
	clientMsg struct {
		Type string `json:"type"`
		ID   string `json:"id,omitempty"`
	}
	errorMsg struct {
		Type    string `json:"type"`
		Code    string `json:"code"`
		Message string `json:"message"`
		ID      string `json:"id,omitempty"`
	}
	helloMsg struct {
		Type         string   `json:"type"`
		Client       string   `json:"client"`
		Fleets       []string `json:"fleets"`
		AllFleets    bool     `json:"all_fleets"`
		MaxRate      float64  `json:"max_rate_hz"`
		SnapshotMax  int      `json:"snapshot_max"`
		ServerTimeMs int64    `json:"server_time_ms"`
		// Devices and Area narrow what the token may see, when it was
		// issued so (control-plane tokens).
		Devices []string `json:"devices,omitempty"`
		Area    *BBox    `json:"area,omitempty"`
	}
	snapshotHeader struct {
		Type      string      `json:"type"`
		ID        string      `json:"id,omitempty"`
		TimeMs    int64       `json:"time_ms"`
		Total     int         `json:"total"`
		Truncated bool        `json:"truncated"`
		Filter    filterEcho  `json:"filter"`
		Vehicles  []*struct{} `json:"vehicles"` // always empty: the vehicles are streamed after it
	}
	filterEcho struct {
		Devices []string `json:"devices,omitempty"`
		Fleets  []string `json:"fleets,omitempty"`
		BBox    *BBox    `json:"bbox,omitempty"`
		MaxRate float64  `json:"max_rate_hz"`
	}
	unsubscribedMsg struct {
		Type string `json:"type"`
		ID   string `json:"id,omitempty"`
	}
)

// hello queues the first message of a connection: who the client is and
// what it may see.
func (c *client) hello() {
	sc := c.who.scope
	h := helloMsg{Type: "hello", Client: c.who.name, AllFleets: sc.all, MaxRate: c.f.cfg.MaxRate,
		SnapshotMax: c.f.cfg.SnapshotMax, ServerTimeMs: time.Now().UnixMilli()}
	if sc.all {
		h.Fleets = c.f.store.knownFleets()
	} else {
		h.Fleets = sc.list
	}
	h.Devices = sc.deviceList
	if sc.area != nil {
		h.Area = sc.area.bbox()
	}
	b, _ := json.Marshal(h)
	c.queueControl(b)
}

// handle acts on one message from the client.
func (c *client) handle(data []byte) {
	var m clientMsg
	if err := json.Unmarshal(data, &m); err != nil {
		c.sendError(&clientError{code: errCodeBadMessage, msg: "not a JSON object with a type: " + err.Error()})
		return
	}
	switch m.Type {
	case "subscribe":
		if !c.allowSubscribe() {
			c.f.m.subscribes.WithLabelValues("refused").Inc()
			c.sendError(&clientError{code: errCodeRateLimited, id: m.ID,
				msg: "too many subscribe messages; the subscription in force is unchanged (debounce viewport changes)"})
			return
		}
		var s subscribeMsg
		if err := json.Unmarshal(data, &s); err != nil {
			c.f.m.subscribes.WithLabelValues("refused").Inc()
			c.sendError(&clientError{code: errCodeBadSubscribe, id: m.ID, msg: err.Error()})
			return
		}
		sub, cerr := newSubscription(&s, c.who.scope, &c.f.cfg)
		if cerr != nil {
			c.f.m.subscribes.WithLabelValues("refused").Inc()
			c.sendError(cerr)
			return
		}
		c.f.m.subscribes.WithLabelValues("ok").Inc()
		c.subscribe(sub)
	case "unsubscribe":
		c.unsubscribe(m.ID)
	default:
		c.sendError(&clientError{code: errCodeBadMessage, id: m.ID, msg: "unknown message type " + quote(m.Type)})
	}
}

func quote(s string) string {
	if len(s) > 64 {
		s = s[:64] + "…"
	}
	return string(appendString(nil, s))
}

// allowSubscribe takes a token from the client's subscribe bucket.
func (c *client) allowSubscribe() bool {
	now := time.Now()
	c.tokens = min(subscribeBurst, c.tokens+now.Sub(c.tokensAt).Seconds()*subscribeRate)
	c.tokensAt = now
	if c.tokens < 1 {
		return false
	}
	c.tokens--
	return true
}

// subscribe puts sub in force: it holds updates, walks the vehicles for the
// snapshot, then queues the snapshot ahead of the updates that came in
// meanwhile (dropping those the snapshot already has).
func (c *client) subscribe(sub *subscription) {
	c.mu.Lock()
	if c.stopping {
		c.mu.Unlock()
		return
	}
	if c.sub == nil {
		c.f.m.subscriptions.Inc()
	}
	c.gen++
	gen := c.gen
	c.sub, c.snapPending, c.snap = sub, true, nil
	clear(c.due)
	clear(c.held)
	clear(c.shown)
	c.heldNext, c.dueSince = 0, 0
	c.mu.Unlock()
	// Out of its stream only now that the snapshot is pending: a stream
	// message given meanwhile is dropped with the others not yet taken,
	// and the client cannot join a stream again (drainedLocked) before
	// its snapshot has been written, which no stream message may precede.
	c.f.rekey(c, streamKey(c.who.scope, sub))

	scope := c.who.scope
	limit := c.f.cfg.SnapshotMax
	var list []*vehicle
	total := 0
	if sub.devices != nil && len(sub.devices) < 64 {
		// A handful of devices: look them up rather than walk everything.
		for id := range sub.devices {
			if v := c.f.store.get(id); v != nil && scope.permits(v) && sub.match(v) {
				total++
				if len(list) < limit {
					list = append(list, v)
				}
			}
		}
	} else {
		c.f.store.each(func(v *vehicle) bool {
			if scope.permits(v) && sub.match(v) {
				total++
				if len(list) < limit {
					list = append(list, v)
				}
			}
			return true
		})
	}
	now := time.Now()
	h := snapshotHeader{Type: "snapshot", ID: sub.id, TimeMs: now.UnixMilli(), Total: total, Truncated: total > len(list),
		Filter: filterEcho{Devices: sub.deviceList, Fleets: sub.fleetList, MaxRate: sub.rate}, Vehicles: []*struct{}{}}
	if sub.box != nil {
		h.Filter.BBox = sub.box.bbox()
	}
	header, _ := json.Marshal(h)
	// header ends in "vehicles":[]} : cut to "vehicles":[ for streaming.
	header = header[:len(header)-2]
	if total > len(list) {
		c.f.m.dropped.WithLabelValues("snapshot_limit").Add(float64(total - len(list)))
	}

	// The maps are built before taking the lock, which ingest waits for.
	nowNs := now.UnixNano()
	shown := make(map[string]int64, len(list))
	inSnap := make(map[string]*vehicle, len(list))
	for _, v := range list {
		shown[v.id] = nowNs
		inSnap[v.id] = v
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen || c.stopping {
		return
	}
	c.shown = shown
	for id, p := range c.due {
		if sv, ok := inSnap[id]; ok && !p.gone && p.v.olderOrSame(sv) {
			delete(c.due, id)
		}
	}
	c.snap = &snapshotOut{header: header, vehicles: list}
	c.snapPending = false
	// The alerts under way for these vehicles, after the snapshot: the
	// alert messages queued before it were for the old subscription.
	c.alerts = nil
	if msg := c.f.activeAlertsMsg(c, sub, sub.id); msg != nil {
		c.alerts = append(c.alerts, msg)
	}
	c.signal()
}

// unsubscribe stops updates until the next subscribe.
func (c *client) unsubscribe(id string) {
	c.f.rekey(c, "")
	c.mu.Lock()
	if c.sub != nil {
		c.f.m.subscriptions.Dec()
	}
	c.gen++
	c.sub, c.snapPending, c.snap = nil, false, nil
	clear(c.due)
	clear(c.held)
	clear(c.shown)
	c.heldNext, c.dueSince = 0, 0
	c.mu.Unlock()
	b, _ := json.Marshal(unsubscribedMsg{Type: "unsubscribed", ID: id})
	c.queueControl(b)
}
