// Package sink is the contract between a storage writer and the stores it
// writes to (InfluxDB, the Parquet lake). A storage writer takes batches of
// enriched records from its durable queue, hands them to its Sink, and
// removes them from the queue only when Write returned nil. So Write must
// return nil only when the records are durable in the store, and must be
// idempotent: after a crash the same records come again (at least once), and
// the store must end up with each (device, sequence) once, or with rows that a
// query can deduplicate exactly.
package sink

import (
	"context"
	"errors"
	"fmt"

	"github.com/drover-telemetry/drover/telemetry"
)

// Sink writes records to a store.
type Sink interface {
	// Name is the sink's short name for logs and metrics ("influx", "lake").
	Name() string
	// Write stores recs durably, or returns an error. An error wrapped with
	// Permanent means the store refuses these records for good (a retry
	// cannot succeed): the writer bisects the batch to find the records at
	// fault and dead-letters them. Any other error is transient: the writer
	// retries the same batch with backoff. Write must honour ctx, and be
	// safe for concurrent use: the writer has several writes in flight
	// (-sink-writers), which may finish in any order.
	Write(ctx context.Context, recs []*telemetry.EnrichedRecord) error
	// Close flushes and releases the sink. Records given to Write before
	// are durable or were reported as failed.
	Close(ctx context.Context) error
}

// ErrPermanent is what Permanent errors wrap.
var ErrPermanent = errors.New("store refuses the records")

// Permanent marks err as a refusal for good (e.g. an HTTP 400 from InfluxDB:
// a field of the wrong type).
func Permanent(err error) error { return fmt.Errorf("%w: %w", ErrPermanent, err) }

// IsPermanent reports whether err is a refusal for good.
func IsPermanent(err error) bool { return errors.Is(err, ErrPermanent) }

// ErrMisconfigured is what Misconfigured errors wrap.
var ErrMisconfigured = errors.New("store refuses the writer's configuration")

// Misconfigured marks a transient err that no retry will cure until an
// operator acts: the store refuses the writer itself (a database that does
// not exist, bad credentials), not the records. The writer keeps the records
// and retries like any transient error, but logs the outage at error level
// and says why it is not ready.
func Misconfigured(err error) error { return fmt.Errorf("%w: %w", ErrMisconfigured, err) }

// IsMisconfigured reports whether err says an operator must act.
func IsMisconfigured(err error) bool { return errors.Is(err, ErrMisconfigured) }
