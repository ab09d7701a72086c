package alerts

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/drover-telemetry/drover/alerts/eval"
	"github.com/drover-telemetry/drover/internal/atomicfile"
	"github.com/drover-telemetry/drover/internal/backoff"
	"github.com/drover-telemetry/drover/queue"
	"github.com/drover-telemetry/drover/telemetry"
)

const (
	// readBytes is what one queue read takes.
	readBytes = 1 << 20
	// heldMax: past this many bytes evaluated but not yet covered by a
	// snapshot, one is taken at once (the queue keeps them in memory until
	// acked).
	heldMax = 64 << 20
)

// snapshot is what DIR/state/snapshot.json holds: the evaluator's state
// after every queue entry up to Applied, with rule set RulesVersion in
// force.
type snapshot struct {
	Applied      uint64          `json:"applied"`
	RulesVersion int64           `json:"rules_version"`
	TakenMs      int64           `json:"taken_ms"`
	State        json.RawMessage `json:"state"`
}

func (e *Engine) snapshotPath() string { return filepath.Join(e.cfg.DataDir, "state", "snapshot.json") }

// recover builds the evaluator from the last snapshot (or empty), and
// learns from the outbox up to which queue entry events were already
// written.
func (e *Engine) recover() error {
	e.logged = e.out.lastInput()
	b, err := os.ReadFile(e.snapshotPath())
	if errors.Is(err, os.ErrNotExist) {
		ev, err := eval.New(nil, e.cfg.Eval)
		if err != nil {
			return err
		}
		e.ev = ev
		e.logger.Info("alerts: no snapshot: evaluating from the start of the queue", "outbox_through", e.logged)
		return nil
	}
	if err != nil {
		return fmt.Errorf("read snapshot: %w", err)
	}
	var s snapshot
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("snapshot %s: %w (it is written atomically: this is damage, not a crash)", e.snapshotPath(), err)
	}
	rs := &eval.RuleSet{}
	if s.RulesVersion != 0 {
		if rs, err = e.rules.load(s.RulesVersion); err != nil {
			return fmt.Errorf("rule set of the snapshot: %w", err)
		}
	}
	start := time.Now()
	var ev *eval.Evaluator
	err = e.compile(rs, func() (err error) {
		ev, err = eval.New(rs, e.cfg.Eval)
		return err
	})
	if err != nil {
		return fmt.Errorf("rule set %d of the snapshot: %w", s.RulesVersion, err)
	}
	if err := ev.RestoreState(s.State); err != nil {
		return err
	}
	e.ev, e.applied = ev, s.Applied
	e.m.rulesVersion.Set(float64(ev.Version()))
	e.m.devices.Set(float64(ev.Devices()))
	e.logger.Info("alerts: state recovered", "applied", s.Applied, "outbox_through", e.logged, "devices", ev.Devices(),
		"rules_version", s.RulesVersion, "snapshot_age", time.Since(time.UnixMilli(s.TakenMs)).Round(time.Second), "took", time.Since(start))
	return nil
}

// evalLoop evaluates the queue in order until ctx ends, writing the events
// to the outbox and, every SnapshotInterval, a snapshot, after which the
// queue entries it covers are acked. On return the last snapshot covers
// everything evaluated.
func (e *Engine) evalLoop(ctx context.Context, q *queue.Queue) error {
	last := time.Now()
	for {
		rctx, cancel := context.WithTimeout(ctx, e.cfg.SnapshotInterval)
		b, err := q.Read(rctx, readBytes)
		cancel()
		switch {
		case err == nil && len(b.Entries) > 0:
			e.evaluate(ctx, b)
			e.held = append(e.held, b)
			e.heldB += b.Bytes
		case ctx.Err() != nil:
			if err := e.takeSnapshot(q); err != nil {
				e.logger.Error("alerts: last snapshot failed (the queue keeps the entries; they are evaluated again)", "err", err)
			}
			return nil
		case errors.Is(err, queue.ErrClosed):
			return errors.New("alerts: queue closed under the evaluation")
		case err != nil && !errors.Is(err, context.DeadlineExceeded):
			e.logger.Error("alerts: read queue", "err", err)
			backoff.Sleep(ctx, time.Second)
		}
		if len(e.held) > 0 && (time.Since(last) >= e.cfg.SnapshotInterval || e.heldB >= heldMax) {
			if err := e.takeSnapshot(q); err != nil {
				e.logger.Error("alerts: snapshot failed; retrying at the next interval", "err", err)
			}
			last = time.Now()
		}
	}
}

// evaluate evaluates batch b's entries (those after the snapshot's), and
// appends the events of the entries the outbox does not have yet. An
// outbox that cannot be written (a full disk) is retried until it can, or
// until ctx ends (the events are then lost from memory, but the entries
// are not acked: after a restart they are evaluated again).
func (e *Engine) evaluate(ctx context.Context, b queue.Batch) {
	events := e.evBuf[:0]
	suppress := false
	emit := func(ev *eval.Event) {
		if !suppress {
			events = append(events, *ev)
		}
	}
	now := e.now()
	var last uint64
	for _, en := range b.Entries {
		if en.Seq <= e.applied {
			continue // in the snapshot already (its removal had not reached the disk)
		}
		suppress = en.Seq <= e.logged
		e.apply(en, emit, now)
		e.applied, last = en.Seq, en.Seq
	}
	e.evBuf = events[:0]
	if len(events) == 0 || last == 0 {
		return
	}
	retry := backoff.New(100*time.Millisecond, 5*time.Second, nil)
	for {
		err := e.out.append(last, events)
		if err == nil {
			break
		}
		e.logger.Error("alerts: cannot write the outbox; retrying (evaluation waits)", "err", err)
		if !backoff.Sleep(ctx, retry.Next()) {
			// Stopping with events that are nowhere: no snapshot may now
			// cover these entries, so that a restart evaluates them again.
			e.unsaved = true
			return
		}
	}
	e.logged = last
	for i := range events {
		e.m.events.WithLabelValues(events[i].Alert.Type, events[i].Kind).Inc()
	}
	if e.hook != nil {
		e.hook("after-outbox")
	}
}

// apply evaluates one queue entry.
func (e *Engine) apply(en queue.Entry, emit eval.Emit, now time.Time) {
	if len(en.Data) == 0 {
		e.m.badEntries.Inc()
		return
	}
	body := en.Data[1:]
	switch en.Data[0] {
	case entryReadings:
		var pb telemetry.PublishBatch
		if err := proto.Unmarshal(body, &pb); err != nil {
			e.m.badEntries.Inc()
			e.logger.Error("alerts: queue entry is not a PublishBatch; skipped", "seq", en.Seq, "err", err)
			return
		}
		before := e.ev.Stats()
		for _, r := range pb.GetRecords() {
			e.ev.Process(r, emit)
			if ms := r.GetRecord().GetReceivedMs(); ms > 0 {
				e.m.evalDelay.Observe(max(0, now.Sub(time.UnixMilli(ms)).Seconds()))
			}
		}
		after := e.ev.Stats()
		e.m.readings.Add(float64(after.Readings - before.Readings))
		e.m.lateReadings.Add(float64(after.Late - before.Late))
		e.m.duplicates.Add(float64(after.Duplicates - before.Duplicates))
		e.m.held.Add(float64(after.Held - before.Held))
	case entryTick:
		if len(body) != 8 {
			e.m.badEntries.Inc()
			return
		}
		e.ev.Tick(int64(binary.LittleEndian.Uint64(body)), emit)
		e.m.devices.Set(float64(e.ev.Devices()))
	case entryRules:
		if len(body) != 8 {
			e.m.badEntries.Inc()
			return
		}
		v := int64(binary.LittleEndian.Uint64(body))
		rs, err := e.rules.load(v)
		if err == nil {
			err = e.compile(rs, func() error { return e.ev.SetRuleSet(rs, emit) })
		}
		e.ruleEntryDone(v)
		if err != nil {
			// The same on every replay: the old rule set stays.
			e.logger.Error("alerts: rule set refused; the previous one stays in force", "version", v, "err", err)
			return
		}
		e.m.rulesVersion.Set(float64(v))
		e.logger.Info("alerts: rule set in force", "version", v, "rules", len(rs.Rules), "geofences", len(rs.Geofences))
	default:
		e.m.badEntries.Inc()
	}
}

// takeSnapshot saves the evaluator's state, then acks the queue entries it
// covers. The outbox is synced first: the events of those entries must be
// durable before the entries can go.
func (e *Engine) takeSnapshot(q *queue.Queue) error {
	if len(e.held) == 0 {
		return nil
	}
	if e.unsaved {
		return errors.New("events of evaluated entries could not be written to the outbox")
	}
	start := time.Now()
	err := e.writeSnapshot()
	e.m.snapshotSecs.Observe(time.Since(start).Seconds())
	if err != nil {
		e.m.snapshots.WithLabelValues("error").Inc()
		return err
	}
	e.m.snapshots.WithLabelValues("ok").Inc()
	if e.hook != nil {
		e.hook("after-snapshot")
	}
	for _, b := range e.held {
		q.Ack(b)
	}
	e.held, e.heldB = nil, 0
	e.rules.prune(e.ev.Version())
	return nil
}

func (e *Engine) writeSnapshot() error {
	if err := e.out.sync(); err != nil {
		return err
	}
	state, err := e.ev.MarshalState()
	if err != nil {
		return err
	}
	b, err := json.Marshal(snapshot{Applied: e.applied, RulesVersion: e.ev.Version(), TakenMs: time.Now().UnixMilli(), State: state})
	if err != nil {
		return fmt.Errorf("encode snapshot: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(e.snapshotPath()), 0o755); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	if err := atomicfile.WriteFile(e.snapshotPath(), b, 0o644); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	e.m.snapshotBytes.Set(float64(len(b)))
	return nil
}

// tickLoop journals the clock: a tick entry every TickInterval.
func (e *Engine) tickLoop(ctx context.Context, q *queue.Queue) {
	t := time.NewTicker(e.cfg.TickInterval)
	defer t.Stop()
	var buf [9]byte
	buf[0] = entryTick
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		binary.LittleEndian.PutUint64(buf[1:], uint64(e.now().UnixMilli()))
		if _, err := q.Append(ctx, buf[:]); err != nil && ctx.Err() == nil && !queue.Retryable(err) {
			e.logger.Warn("alerts: cannot journal a clock tick", "err", err)
		}
	}
}
