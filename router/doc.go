// Package router is drover's fan-in and fan-out tier. It accepts batches from
// every frontend on a ZeroMQ ROUTER socket, appends each batch to its own
// durable queue and acks the frontend only after fsync, enriches every
// reading with what the registry knows of its device (fleet, vehicle class,
// region), and publishes it in two lanes, each on its own PUB endpoint:
//
//   - live. at once and best effort, for the live feed; it may drop, and
//     counts what it drops;
//   - store. in queue order, for the named durable subscribers (the storage
//     writers). A batch leaves the router's queue only when every registered
//     durable subscriber has acked it; what stays un-acked is published again.
//
// Two endpoints, because a go-zeromq PUB socket writes to its subscribers one
// after another: a slow durable subscriber must not stall the live lane.
//
// Built so far: the fan-in (receive, deduplicate, store, ack). Enrichment and
// the two lanes come next; -live-pub and -store-pub are not bound yet.
//
// The package is a library: cmd/drover builds a [Router] from a [Config] with
// [New] and runs it with [Router.Run].
//
// # Receiving
//
// The wire protocol is internal/forward's (see its doc.go). One goroutine
// receives: it answers pings and hands each batch to a goroutine of its own
// (at most -max-pending-batches at once; past that it answers busy), so it
// never waits on the disk. Appends from all frontends meet in the queue's
// group commit: one fsync covers every append that arrived during the
// previous one. A single writer goroutine sends every answer (zmq4's ROUTER
// serialises its writes anyway). A batch is acked only after its Append
// returned nil; an append refused as back-pressure (queue.Retryable: queue
// full at -queue-max-bytes, disk full or failing) is answered busy and
// counted, and the frontend keeps the batch and backs off.
//
// # The queue entry
//
// For each run of new sequences first..last of a sender, the router
// appends one entry: the frontend entries concatenated, then a serialized
// telemetry.Batch{Sender, Seq: first, LastSeq: last}; decoded, it is one
// Batch with every record (see forward.AppendStored). A batch that dedup
// splits into several runs gives one entry per run, so seq..last_seq is
// always exact. The runs of one batch go in one Append (one record, all or
// nothing) when they fit in a queue record (1 MiB); a larger batch is cut
// into several entries and appends, each recorded as stored as soon as it
// is durable.
//
// # Recognising duplicates
//
// A frontend resends what it did not hear acked (timeouts, failover, a
// router restart, its own restart), possibly grouped differently, and with
// several routers and zmq4's silent drops a sender's stream to one router
// has gaps: so the router keeps, per sender, the set of queue sequences it
// has stored as a list of intervals (forward.SeqSet), never a high-water
// mark. Of each batch, only the sequences not in that set are appended; the
// others are counted as duplicates, and the whole batch is acked once the
// new part is durable. Sequences that another batch is appending at that
// moment are not appended again: the batch waits for that append and
// answers with its outcome. Each sender's set is bounded by
// -dedup-intervals (default 4096; an in-order stream is one interval);
// past it the oldest intervals are forgotten, and a resend of those is
// stored again, never refused.
//
// The sets survive restarts in DIR/dedup.log, next to the queue's files
// (the queue's lock covers it). After each durable append the router writes
// a small record (sender, first, last, CRC-32C) with write(2); the journal
// is fsynced every second and rewritten compactly (one record per interval:
// temporary file, fsync, rename, directory fsync) at start, at clean stop,
// and every 64Ki records. It therefore also remembers entries that were
// delivered downstream and removed from the queue, which a scan of the queue
// could not. What it can miss, and only as duplicates stored, never as loss:
//
//   - a crash between an append's return and its journal record (the
//     frontend did not get the ack either, resends, and the entries are
//     stored twice);
//   - after a power loss, the records of the last second; a torn tail is
//     cut at the first record that fails its CRC;
//   - intervals forgotten past -dedup-intervals.
//
// Without a journal (first start, or the file removed), the router reads
// its whole queue once at start to rebuild the sets (then Rewind); that
// holds the queue's content in memory while it runs, and cannot know what
// was already removed. Sinks are idempotent, so a duplicate that gets
// through costs only work.
//
// # Stopping
//
// When Run's context ends the router stops answering pings (frontends see
// it down and fail over) and answers new batches busy, waits for the
// appends under way and sends their acks, closes its socket, writes a
// compact journal and closes the queue.
package router
