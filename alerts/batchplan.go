package alerts

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/drover-telemetry/drover/alerts/eval"
	"github.com/drover-telemetry/drover/internal/atomicfile"
)

// A planned batch makes an output's deliveries repeatable: before it
// delivers records From..To of the outbox, the output saves that range, a
// stamp and a digest of the batch's event ids (DIR/outbox/cursors/NAME.plan,
// atomically). Its cursor is saved after the delivery. If the engine dies
// in between (kill -9), the next start finds a plan that begins right
// after the cursor and delivers exactly those records again, with the same
// stamp. The lake names its files after the stamp, so the second delivery
// finds every file already there and writes nothing twice; a plain batch
// would have been read up to wherever the outbox had grown meanwhile, and
// written under new names.
//
// The digest guards the one case where the records could differ: a power
// loss that took outbox records not yet synced (kill -9 does not: the page
// cache survives it). Their events are evaluated again but may be grouped
// into other records; then the plan is dropped, the batch gets a new stamp,
// and events written before the crash are in the table twice (queries
// dedupe by event_id, docs/alerts.md).
type batchPlan struct {
	From   uint64 `json:"from"`
	To     uint64 `json:"to"`
	Stamp  int64  `json:"stamp"`
	Digest string `json:"digest"`
}

// planner keeps one output's plan.
type planner struct {
	path string
	last batchPlan // the plan saved last (zero: none)
}

// planner loads the plan of output name, if any.
func (o *outbox) planner(name string) (*planner, error) {
	p := &planner{path: o.cursorPath(name) + ".plan"}
	b, err := os.ReadFile(p.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return p, nil
	case err != nil:
		return nil, fmt.Errorf("outbox: plan of %s: %w", name, err)
	}
	if err := json.Unmarshal(b, &p.last); err != nil {
		// A plan is written atomically: this is not a torn write. Start
		// afresh (at worst events written before are written again).
		o.logger.Warn("alerts: outbox: unreadable batch plan, ignored", "file", p.path, "err", err)
		p.last = batchPlan{}
	}
	return p, nil
}

// read returns the next batch of records after c: the planned batch when
// the plan starts right after c (a delivery a crash interrupted), else up
// to maxEvents events' worth (waiting for one). A nil planner reads
// plainly.
func (p *planner) read(ctx context.Context, o *outbox, c *cursor, maxEvents int) ([]outRecord, error) {
	if p != nil && p.last.From != 0 {
		o.mu.Lock()
		from := c.done + 1
		o.mu.Unlock()
		if from == p.last.From {
			recs, err := o.readRange(c, p.last.To)
			if err != nil || len(recs) > 0 {
				return recs, err
			}
		}
	}
	return o.read(ctx, c, maxEvents)
}

// plan returns the stamp of the batch recs (whose events, after the
// output's filter, are events): the planned one when recs are the planned
// batch again, else a new one, saved (fsynced) before it is returned.
func (p *planner) plan(recs []outRecord, events []eval.Event) (int64, error) {
	h := sha256.New()
	for i := range events {
		h.Write([]byte(events[i].ID()))
		h.Write([]byte{0})
	}
	next := batchPlan{From: recs[0].Seq, To: recs[len(recs)-1].Seq, Digest: hex.EncodeToString(h.Sum(nil)[:16])}
	if p.last.From == next.From && p.last.To == next.To && p.last.Digest == next.Digest {
		return p.last.Stamp, nil
	}
	// Stamps grow, whatever the wall clock does: a name made from an older
	// stamp could be one a past batch took.
	next.Stamp = max(time.Now().UnixNano(), p.last.Stamp+1)
	b, err := json.Marshal(next)
	if err != nil {
		return 0, err
	}
	if err := atomicfile.WriteFile(p.path, b, 0o644); err != nil {
		return 0, err
	}
	p.last = next
	return next.Stamp, nil
}
