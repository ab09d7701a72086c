package alerts

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/drover-telemetry/drover/alerts/eval"
	"github.com/drover-telemetry/drover/internal/backoff"
)

// output is one place alert events go. Each reads the outbox from its own
// cursor, in order, and delivers batches, retried until they go: so every
// output gets every event, in order per device, at least once (an event
// can go twice only when the engine dies between a delivery and saving
// the cursor: receivers dedupe by event id).
type output struct {
	name    string
	durable bool
	// maxEvents bounds a delivery; every waits between two (the lake
	// gathers minutes into one file).
	maxEvents int
	every     time.Duration
	// filter keeps the events this output wants (nil: all).
	filter  func(ev *eval.Event) bool
	deliver func(ctx context.Context, events []eval.Event) error
	// deliverPlanned, when set instead of deliver, gets planned batches
	// (batchplan.go): the same batch, with the same stamp, when it is
	// delivered again after a crash, so that what it writes can be named
	// after the stamp and written once.
	deliverPlanned func(ctx context.Context, stamp int64, events []eval.Event) error
}

// deliverGrace is how long a delivery under way at shutdown may take to
// finish (so that its cursor is saved and it is not delivered again after
// the restart).
const deliverGrace = 5 * time.Second

// runOutput delivers the outbox to o until ctx ends. A delivery under way
// then gets deliverGrace to finish.
func (e *Engine) runOutput(ctx context.Context, o *output) {
	hard, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stopHard := context.AfterFunc(ctx, func() {
		t := time.AfterFunc(deliverGrace, cancel)
		<-hard.Done()
		t.Stop()
	})
	defer stopHard()
	log := e.logger.With("output", o.name)
	c, err := e.out.cursor(o.name, o.durable)
	if err != nil {
		log.Error("alerts: output cannot start", "err", err)
		return
	}
	retry := backoff.New(200*time.Millisecond, e.cfg.WebhookMaxBackoff, nil)
	failing := false
	lag := e.m.outputLag.WithLabelValues(o.name)
	delivered := e.m.delivered.WithLabelValues(o.name)
	failures := e.m.failures.WithLabelValues(o.name)
	delay := e.m.deliverDelay.WithLabelValues(o.name)
	var plans *planner
	if o.deliverPlanned != nil {
		if plans, err = e.out.planner(o.name); err != nil {
			log.Error("alerts: output cannot start", "err", err)
			return
		}
	}
	for {
		recs, err := plans.read(ctx, e.out, c, o.maxEvents)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			log.Error("alerts: read outbox", "err", err)
			backoff.Sleep(ctx, time.Second)
			continue
		}
		var events []eval.Event
		for _, r := range recs {
			for i := range r.Events {
				if o.filter == nil || o.filter(&r.Events[i]) {
					events = append(events, r.Events[i])
				}
			}
		}
		var stamp int64
		if plans != nil && len(events) > 0 {
			if stamp, err = plans.plan(recs, events); err != nil {
				log.Error("alerts: save the output's batch plan", "err", err)
				backoff.Sleep(ctx, time.Second)
				continue
			}
		}
		if len(events) > 0 {
			lag.Set(max(0, time.Since(time.UnixMilli(events[0].DetectedMs)).Seconds()))
		}
		for len(events) > 0 {
			var err error
			if plans != nil {
				err = o.deliverPlanned(hard, stamp, events)
			} else {
				err = o.deliver(hard, events)
			}
			if err == nil {
				if e.hook != nil {
					e.hook("delivered-" + o.name) // before the cursor is saved
				}
				if failing {
					log.Info("alerts: output delivers again")
					failing = false
				}
				retry.Reset()
				now := time.Now()
				for i := range events {
					delay.Observe(max(0, now.Sub(time.UnixMilli(events[i].DetectedMs)).Seconds()))
				}
				delivered.Add(float64(len(events)))
				break
			}
			if ctx.Err() != nil {
				return
			}
			failures.Inc()
			if !failing {
				log.Warn("alerts: output failing; retrying with backoff (the outbox keeps its events)", "events", len(events), "err", err)
				failing = true
			} else {
				log.Debug("alerts: output still failing", "err", err)
			}
			if !backoff.Sleep(ctx, retry.Next()) {
				return
			}
		}
		lag.Set(0)
		if err := e.out.done(c, recs[len(recs)-1].Seq); err != nil {
			log.Error("alerts: save output cursor (events may be delivered again after a restart)", "err", err)
		}
		if o.every > 0 && !backoff.Sleep(ctx, o.every) {
			return
		}
	}
}

// startOutputs starts every configured output.
func (e *Engine) startOutputs(ctx context.Context, wg *sync.WaitGroup, f *follower) {
	start := func(o *output) { wg.Go(func() { e.runOutput(ctx, o) }) }
	if e.lane != nil {
		start(e.laneOutput())
	}
	if e.cfg.Influx.URL != "" {
		if o, err := e.influxOutput(); err != nil {
			e.logger.Error("alerts: influx output", "err", err)
		} else {
			start(o)
		}
	}
	if e.cfg.Lake.Dir != "" {
		if o, err := e.lakeOutput(); err != nil {
			e.logger.Error("alerts: lake output", "err", err)
		} else {
			start(o)
		}
	}
	if e.cfg.APIURL != "" {
		start(e.apiOutput())
	}
	wg.Go(func() { e.webhooks(ctx, f) })
}

// laneOutput publishes events on the alert lane: best effort, from now on
// (an ephemeral cursor), and only events younger than LiveMaxAge.
func (e *Engine) laneOutput() *output {
	return &output{name: "lane", maxEvents: 1000, deliver: func(_ context.Context, events []eval.Event) error {
		now := e.now().UnixMilli()
		for i := range events {
			if now-events[i].AtMs > e.cfg.LiveMaxAge.Milliseconds() {
				e.m.liveSkippedOld.Inc()
				continue
			}
			b, err := json.Marshal(&events[i])
			if err != nil {
				continue
			}
			e.lane.Offer(b)
		}
		return nil
	}}
}

// webhooks keeps one output per enabled webhook of the rule set the
// follower has, starting and stopping them as the rule set changes. A new
// webhook gets the events from its creation on; a removed one's cursor is
// forgotten.
func (e *Engine) webhooks(ctx context.Context, f *follower) {
	type running struct {
		stop context.CancelFunc
		done chan struct{}
		hook *webhookTarget
	}
	live := map[string]*running{}
	defer func() {
		for _, r := range live {
			r.stop()
			<-r.done
		}
	}()
	client := &http.Client{Timeout: e.cfg.WebhookTimeout}
	for {
		rs, changed := f.current()
		want := map[string]eval.Webhook{}
		if rs != nil {
			for _, w := range rs.Webhooks {
				if w.On() {
					want[w.ID] = w
				}
			}
		}
		for id, r := range live {
			w, ok := want[id]
			if !ok {
				r.stop()
				<-r.done
				delete(live, id)
				e.out.forget("webhook-" + id)
				e.logger.Info("alerts: webhook removed", "webhook", id)
				continue
			}
			r.hook.set(w)
		}
		for id, w := range want {
			if live[id] != nil {
				continue
			}
			t := &webhookTarget{e: e, client: client, log: e.logger.With("webhook", id)}
			t.set(w)
			wctx, stop := context.WithCancel(ctx)
			r := &running{stop: stop, done: make(chan struct{}), hook: t}
			live[id] = r
			go func() {
				defer close(r.done)
				e.runOutput(wctx, &output{name: "webhook-" + id, durable: true, maxEvents: 100, filter: t.wants, deliver: t.deliver})
			}()
			e.logger.Info("alerts: webhook added", "webhook", id, "fleet", w.Fleet)
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// webhookTarget is one webhook receiver; its settings can change while it
// runs (a new secret, a new URL).
type webhookTarget struct {
	e      *Engine
	client *http.Client
	log    *slog.Logger
	mu     sync.Mutex
	w      eval.Webhook
}

func (t *webhookTarget) set(w eval.Webhook) {
	t.mu.Lock()
	t.w = w
	t.mu.Unlock()
}

func (t *webhookTarget) get() eval.Webhook {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.w
}

func (t *webhookTarget) wants(ev *eval.Event) bool {
	w := t.get()
	return w.Wants(&ev.Alert)
}

// WebhookPayload is the body of a webhook delivery (docs/alerts.md,
// "Webhooks").
type WebhookPayload struct {
	Webhook string       `json:"webhook"`
	SentMs  int64        `json:"sent_ms"`
	Events  []eval.Event `json:"events"`
}

// Headers of a webhook delivery.
const (
	HeaderSignature = "X-Drover-Signature"
	HeaderTimestamp = "X-Drover-Timestamp"
	HeaderWebhook   = "X-Drover-Webhook"
	HeaderEvents    = "X-Drover-Events"
)

// Sign returns the signature of a delivery: "v1=" and the hex HMAC-SHA256,
// under secret, of the timestamp header, a dot, and the body. A receiver
// recomputes it and compares in constant time (and refuses old
// timestamps, against replays).
func Sign(secret, timestamp string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(timestamp))
	m.Write([]byte{'.'})
	m.Write(body)
	return "v1=" + hex.EncodeToString(m.Sum(nil))
}

// errStatus is a receiver's answer other than 2xx.
type errStatus struct {
	code int
	body string
}

func (e *errStatus) Error() string { return fmt.Sprintf("receiver answered %d: %s", e.code, e.body) }

func (t *webhookTarget) deliver(ctx context.Context, events []eval.Event) error {
	w := t.get()
	now := time.Now()
	body, err := json.Marshal(WebhookPayload{Webhook: w.ID, SentMs: now.UnixMilli(), Events: events})
	if err != nil {
		return err
	}
	ts := strconv.FormatInt(now.Unix(), 10)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "drover-alerts")
	req.Header.Set(HeaderTimestamp, ts)
	req.Header.Set(HeaderWebhook, w.ID)
	req.Header.Set(HeaderEvents, strconv.Itoa(len(events)))
	req.Header.Set(HeaderSignature, Sign(w.Secret, ts, body))
	resp, err := t.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 == 2 {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return nil
	}
	// Any other answer is retried, 4xx included (a secret out of sync, a
	// receiver being deployed): nothing is lost while it is fixed, and
	// the output's warning says what the receiver answered.
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
	return &errStatus{code: resp.StatusCode, body: string(bytes.TrimSpace(b))}
}
