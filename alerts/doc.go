// Package alerts is drover's alert engine (drover alerts, and a unit of
// drover all): a durable subscriber of the routers' store lane that
// evaluates every reading against the alert rules (package alerts/eval)
// and delivers the alerts to webhooks, InfluxDB, the lake, the control
// plane and, live, to livefeeds. docs/alerts.md is the operator's guide;
// this file is the contract.
//
// # The path of a reading
//
//	router ──store lane──▶ queue (disk) ──▶ evaluator ──▶ outbox (disk) ──▶ webhooks, InfluxDB, lake, API
//	         ack after fsync   ▲  ticks, rule sets            │   snapshot (disk)    └──▶ alert lane ──▶ livefeeds
//	                           └─ journaled here too          └─ then the queue is acked
//
// The engine subscribes to every router like a storage writer (same
// protocol, same certificate role on that link), appends each batch to its
// own queue (queue.Queue, group commit) and acks the router once it is
// fsynced; a router's batches take their places in the queue in the order
// they arrived (queue.Begin), and share group commits all the same. One
// goroutine evaluates the queue in order.
//
// # The queue is the journal
//
// Everything the evaluation depends on is an entry of the queue, in the
// order it happened: readings (entryReadings), the clock (entryTick: a
// wall time, every -tick) and rule set changes (entryRules: a version,
// whose file in DIR/rules is written and fsynced before the entry). The
// evaluator (eval.Evaluator) reads nothing else, not even the clock. So
// evaluating the same entries from the same state gives the same events,
// with the same ids, in the same order.
//
// # Snapshots, and what a crash can leave
//
// Every -snapshot-interval (5 s) the evaluator's state (every device's:
// fences it is in and since when, episodes under way, last fix, held
// readings, ...) is written to DIR/state/snapshot.json with the seq of the
// last entry it reflects (Applied), atomically (internal/atomicfile: temp,
// fsync, rename, folder fsync). Only then are the queue entries it covers
// acked; until then the queue keeps them. After a crash (kill -9, power
// loss) the engine loads the snapshot and evaluates again every entry
// after Applied: the state is exactly what it was, whatever was lost.
//
// The events of an evaluated batch are appended to the outbox (DIR/outbox,
// outbox.go) as one record that carries the seq of the batch's last
// entry. The outbox is synced before each snapshot. At start the engine
// reads the last record's entry seq (H): while it evaluates again the
// entries up to H, it drops their events (the outbox has them); after H
// it appends. Since the evaluation is deterministic, the events dropped
// are exactly those already written: kill -9 at any moment neither repeats
// nor misses an alert in the outbox. (A record is one write; one torn by a
// crash is cut at open, and its batch's events are then produced again.)
//
// # Outputs: at least once, in order, idempotent downstream
//
// Each output reads the outbox from its own cursor (DIR/outbox/cursors),
// in order, and retries a delivery with backoff until it goes, then saves
// its cursor. An event can be delivered twice only when the engine dies
// between a delivery and saving the cursor; every event has a unique,
// deterministic id (its alert's id and its kind), so downstream takes it
// once: InfluxDB (the point of an alert is keyed by its series and start
// time), the lake (rows carry event_id), the API (upsert by alert id),
// webhook receivers (X-Drover-Signature, each event's id: dedupe by it).
// Webhooks are in outbox order, hence in order per device; a receiver
// that is down gets everything afterwards (the outbox keeps it, up to
// -outbox-max-bytes, past which the oldest is dropped for it, logged and
// counted). The alert lane is best effort (an ephemeral cursor from the
// end, events older than -live-max-age not published).
//
// # Clock
//
// Silence is the one rule driven by the clock: a tick judges devices
// against min(its wall time, the newest received time evaluated), so that
// an outage upstream of the engine (nothing arrives from anyone) raises no
// silence, and the gaps the data shows once it flows again are reported,
// late (eval's documentation).
//
// The package is a library: cmd/drover builds an [Engine] from a [Config]
// with [New] and runs it with [Engine.Run].
package alerts
