// Package router is drover's fan-in and fan-out tier. It accepts batches from
// every frontend on a ZeroMQ ROUTER socket (-listen), appends each batch to
// its own durable queue (the main queue) and acks the frontend only after
// fsync, enriches every reading with what the registry knows of its device
// (fleet, vehicle class, region), and delivers it in two lanes, each on its
// own endpoint:
//
//   - the store lane (-store-listen, a ROUTER socket): to each named durable
//     subscriber (the storage writers) from a queue of its own at the
//     router, with a window, acks and resends (see "The store lane");
//   - the live lane (-live-pub, a publisher of our own): at receipt, before
//     the router's own append, and best effort, for the live feed; each
//     subscriber has its own bounded buffer, loses (and counts) what does
//     not fit, and falls behind alone.
//
// Every link is mutual TLS 1.3 under the cluster key (Config.Links, flags
// -cluster-key-file or -insecure-links; internal/clusterlink and
// docs/security.md): a peer without the key reaches none of the protocols
// below. The endpoints bind loopback unless given.
//
// The package is a library: cmd/drover builds a [Router] from a [Config] with
// [New] and runs it with [Router.Run]. [Config.RegistryStore] lets one
// process (drover all) share the frontend's registry.Store (a Store
// registers drover_registry_* metrics, so only one per registerer); else
// the router follows the control plane (-registry-api: internal/registry's
// follower, its copy cached in QueueDir/registry.cache) or opens -registry
// itself, and without any it publishes records with no enrichment. A
// follower with neither a cache nor an answer yet holds the lanes (frontends'
// batches are stored and acked meanwhile): nothing is published
// unenriched.
//
// # Fan-out
//
// Each record of a main entry is enriched (unknown device: an empty
// Enrichment, counted in drover_router_enrichment_misses_total) and the lot
// serialized as one telemetry.PublishBatch{Router: ID, Seq: main entry's
// sequence, Records} (split in several with the same Seq when it would be
// too large), on the wire bytes: the stored Records are copied, not decoded
// (telemetry.WalkBatchRecords, AppendPublishBatch). The lanes take it at two
// points:
//
//   - the live lane at receipt (livepub.go): once dedup has said which
//     sequences of a frontend's batch are new, the ingest goroutine builds
//     those main entries (no seq yet) and offers them live before it
//     appends them to the main queue (the batch is durable at its frontend;
//     live is best effort), each with the next number of the lane's own
//     sequence. What it built is kept for the fan-out (within 8 MiB, keyed
//     by sender and sequence range) so that an entry is built once; the
//     fan-out appends the main entry's seq. What the main queue holds when
//     the router starts is not offered live (live is about now);
//   - the durable fan-out reads the main queue (up to 1 MiB at a time) as
//     its consumer, appends the PublishBatches to EVERY subscriber queue
//     (QUEUE_DIR/subs/<name>/, concurrently: each queue's group commit
//     covers the lot), and only then acks the main entries.
//
// The live lane therefore shows what the router received, the durable
// lanes what it stored. A batch offered live whose append then fails (or
// whose router dies before the fsync) is resent by its frontend and offered
// again when the resend is new to the router it reaches: the same readings
// twice on live. While the main queue refuses appends (full, disk
// failing) a batch is offered only after it is stored, so that resends
// during an outage are not offered again and again; a resend of what is
// stored or being appended is a duplicate to dedup and is not offered.
// Batches of one frontend may be offered out of its order under load. The
// livefeed keeps the newest reading per vehicle by device time and reading
// seq and ignores older or equal ones, so neither changes what its clients
// see.
//
// A subscriber queue that refuses (full at -subscriber-queue-max-bytes,
// disk failing) makes the fan-out wait and retry
// (drover_router_fanout_blocked = 1, a warning). The live lane goes on; the
// main queue holds what arrives until it is full (-queue-max-bytes); then
// the router answers frontends busy, their queues fill, and last the
// devices are told to try again later (close 1013): back-pressure, never a
// silent drop, and the main queue is acked only when every subscriber queue
// holds it. The way out for a dead writer is -subscriber-retention. While
// no durable subscriber is known at all, the fan-out waits too: nothing
// leaves the main queue without a durable home. A crash between the
// appends and the main ack fans the same entries out again after the
// restart: duplicates, which writers and sinks drop by (router, seq) and
// (device, reading seq).
//
// Queue bounds: -queue-max-bytes and -subscriber-queue-max-bytes default to
// 0, a share of the volume at start (queue.Options.MaxBytes): the main
// queue and the subscriber queues split 0.8 × (free + what they hold)
// equally, at least 64 MiB each. docs/reliability.md turns that into hours
// of sink outage.
//
// # Durable subscribers
//
// Subscribers are the names in -subscribers (kept from the router's first
// start, connected or not) and, only with -fixed-subscribers=false (it is
// on by default, and cannot be turned off with -insecure-links), every
// unknown name that a holder of the cluster key subscribes under (loud
// log, drover_router_subscribers_registered_total). The set is persisted in
// QUEUE_DIR/subs/subscribers, so a restart keeps them; a restart resets
// their "last heard" clock to the start. A subscriber not heard from for
// longer than -subscriber-retention (default 24h) is dropped: its queue is
// deleted, with an error log naming what it loses and
// drover_router_subscribers_dropped_total{subscriber}. A static name
// dropped that way comes back, empty, at the next restart.
//
// # The store lane
//
// The protocol is internal/forward's, roles reversed (its doc.go, "The
// store lane"): writers connect a DEALER and send subscribe{name} every
// second; the router answers pong and sends that subscriber's queue as
// batches (router ID as sender, the subscriber queue's sequences, one
// PublishBatch per frame) to the identity of its latest subscribe; the
// writer acks (appended to its own durable queue) or answers busy. One
// goroutine per subscriber reads its queue and keeps at most 8 queue
// batches of at most 256 KiB in flight (2 MiB: what a loopback or LAN TCP
// buffer pair absorbs, so a writer that stops reading does not make the
// ROUTER socket's writes block, which would stall every subscriber: zmq4
// holds the socket's lock during each write; a 2 s send timeout is the
// backstop). A batch is resent after 5 s without ack (with backoff, 50 ms
// doubling to 5 s), after busy (same backoff), and all in flight at once
// when the subscriber subscribes from a new identity or comes back after
// 3 s of silence; a silent subscriber is sent nothing. Queue entries are
// removed when acked. Subscriber queue sequences jump across router
// restarts; writers must not expect them to be contiguous.
//
// Why not a PUB socket for the store lane: a zmq4 PUB has one writer
// goroutine doing blocking writes to each subscriber in turn, so one slow
// subscriber stalls all; with an HWM it drops silently for everyone, and
// Send returns nil while dropping. With per-subscriber queues, cursors and
// windows each writer drains at its own pace, and a dead writer grows only
// its own queue at the router.
//
// # The live lane
//
// Messages are two frames: "live." (exactly those five bytes, [LiveTopic])
// and a serialized PublishBatch. The publisher is our own, on zmq4.Open
// (ZMTP greeting and handshake per connection, over the live link's TLS
// listener): zmq4's PUB queues every Send without bound and writes to its
// subscribers one after another, so one stalled subscriber grew the
// router's heap and held every livefeed to its pace. Each subscriber
// connection has a buffer of at most -live-buffer batches and
// -live-buffer-bytes bytes, and a writer goroutine of its own. The live
// router offers each batch when it receives it (see "Fan-out"), whatever
// the durable fan-out waits on; it is appended to the buffer of every
// subscriber whose subscriptions (counted, prefix-matched, as a PUB does) match
// "live.", and offering never blocks. A full buffer loses its oldest batch
// (drover_router_live_subscriber_dropped_total{subscriber} and
// drover_router_live_dropped_total; a warning per episode). A subscriber
// that takes nothing for 10 s is disconnected (its buffer freed), at most
// 256 are served; memory is bounded by subscribers × (-live-buffer-bytes +
// two batches) (TestLiveLaneBounded). libzmq subscribers interoperate with
// -insecure-links: TestLiveLaneLibzmq.
//
// Metrics: drover_router_fanout_{entries,records,bad_entries}_total,
// drover_router_fanout_blocked, drover_router_enrichment_misses_total,
// drover_router_live_{published,dropped}_total,
// drover_router_fanout_rebuilt_entries_total,
// drover_router_live_{sent,subscriber_dropped}_total{subscriber},
// drover_router_live_subscribers, drover_router_live_disconnects_total{reason},
// drover_link_{handshakes,refused}_total, drover_router_subscribers,
// drover_router_subscribers_{registered,dropped}_total,
// drover_router_subscriber_{sent,acked,resent}_batches_total{subscriber},
// drover_router_subscriber_busy_total{subscriber},
// drover_router_subscriber_connected{subscriber}, and each subscriber
// queue's drover_queue_* with queue="sub-<name>" (depth, bound, fill
// ratio, the volume's free bytes).
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
// When Run's context ends the router stops answering pings and subscribes
// (frontends and writers see it down), stops the fan-out and the live
// lane (the fan-out finishes the appends under way; main entries not yet
// in every subscriber queue are given back; nothing more is offered live),
// sends live subscribers what their buffers hold (for up to a second) and
// closes the live lane, stops the subscriber senders (what they have in flight is sent again after a
// restart) and closes their queues, answers new batches busy, waits for the
// appends under way and sends their acks, closes its sockets, writes a
// compact journal and closes the main queue.
//
// Ready is nil only while the main queue, the subscriber queues and the
// three sockets are open and bound.
package router
