// Package router is drover's fan-in and fan-out tier. It accepts batches from
// every frontend on a ZeroMQ ROUTER socket (-listen), appends each batch to
// its own durable queue (the main queue) and acks the frontend only after
// fsync, enriches every reading with what the registry knows of its device
// (fleet, vehicle class, region), and delivers it in two lanes, each on its
// own endpoint:
//
//   - the store lane (-store-listen, a ROUTER socket): to each named durable
//     subscriber (the storage writers), read from the main queue (the log)
//     through a durable cursor of its own, with a window, acks and resends
//     (see "The store lane");
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
//     sequence. What it built is kept for the subscribers' senders (within
//     8 MiB, keyed by sender and sequence range, shared by all of them) so
//     that an entry is built once; each sender adds the main entry's seq to
//     its copy. What the main queue holds when the router starts is not
//     offered live (live is about now);
//   - the durable lane: the main queue is one log, written once, and each
//     durable subscriber reads it through a queue.Cursor of its own
//     (QUEUE_DIR/cursors/<name>), at its own pace; the log's head is
//     removed when the slowest cursor has passed it. Nothing is copied into
//     a queue per subscriber: a reading costs the router one append and one
//     fsync whatever the number of subscribers.
//
// The live lane therefore shows what the router received, the durable
// lanes what it stored. A batch offered live whose append then fails (or
// whose router dies before the fsync) is resent by its frontend and offered
// again when the resend is new to the router it reaches: the same readings
// twice on live. While the main queue refuses appends (full, disk
// failing) a batch is offered only after it is stored, so that resends
// during an outage are not offered again and again; a resend of what is
// stored or being appended is a duplicate to dedup and is not offered.
// Batches of one frontend may be offered out of its order after a resend.
// The livefeed keeps the newest reading per vehicle by device time and
// reading seq and ignores older or equal ones, so neither changes what its
// clients see.
//
// Order. A frontend has several batches in flight and each is stored by a
// goroutine of its own; a batch takes its place in the main queue
// (queue.Begin) only after the batch received before it from the same
// frontend has taken its own, or needed none (router.go, ingest; order.go).
// The log therefore holds a frontend's batches, and so each device's
// readings, in the order the frontend sent them, and a frontend's batches
// still share group commits. Without it, later batches overtook an earlier
// one, and a device's readings landed after its later ones (more than the
// alerts engine's reorder bound of them made it evaluate the overtaken
// readings as a late stretch). Only a resend (after a timeout, a busy
// answer, a router seen down) can still arrive after later batches
// (internal/forward/doc.go). TestSenderBatchesKeepTheirOrder holds this.
//
// A subscriber that falls behind (its writer down, its sink down) holds
// back only itself: its cursor's lag grows and the log keeps what it has
// not acked, while the other subscribers and the live lane go on. Past
// -subscriber-queue-max-bytes of lag its cursor is "full"
// (drover_queue_cursor_fill_ratio{cursor} = 1, a warning): that changes
// nothing by itself; the log holds what arrives until it is full
// (-queue-max-bytes); then the router answers frontends busy, their queues
// fill, and last the devices are told to try again later (close 1013):
// back-pressure, never a silent drop. The way out for a dead writer is
// -subscriber-retention, which deletes its cursor. While no durable
// subscriber is known at all, nothing leaves the log
// (drover_router_fanout_blocked = 1): nothing leaves the main queue
// without a durable home, and the first subscriber's cursor starts at the
// head. A later subscriber's starts at the tail (what arrives from then
// on). A crash delivers again what a cursor had acked after its file's
// last write (once a second): duplicates, which writers and sinks drop by
// (router, seq) and (device, reading seq).
//
// Queue bounds: -queue-max-bytes defaults to 0, a share of the volume at
// start (queue.Options.MaxBytes: 0.8 × (free + what the process's queues
// hold), at least 64 MiB); -subscriber-queue-max-bytes (0: the log's
// bound) is the lag past which a cursor is full. docs/reliability.md turns
// that into hours of sink outage.
//
// Migration: a router started on a directory of a router from before the
// log (QUEUE_DIR/subs/<name>/, a queue per subscriber) sends each
// subscriber's queue first, then reads the log through its cursor from the
// head, which holds what the old fan-out had not yet given every
// subscriber queue; the old queue is deleted once acked to its end
// (TestMigrationFromSubscriberQueues, on testdata/prelog written by the old
// code).
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
// longer than -subscriber-retention (default 24h) is dropped: its cursor
// is deleted (the log's head no longer waits for it), with an error log naming what it loses and
// drover_router_subscribers_dropped_total{subscriber}. A static name
// dropped that way comes back, empty, at the next restart.
//
// # The store lane
//
// The protocol is internal/forward's, roles reversed (its doc.go, "The
// store lane"): writers connect a DEALER and send subscribe{name} every
// second; the router answers pong and sends what that subscriber's cursor
// reads as batches (router ID as sender, the log's sequences, one
// PublishBatch per frame whose seq is that same sequence) to the identity
// of its latest subscribe; the writer acks (appended to its own durable
// queue) or answers busy. One goroutine per subscriber reads its cursor
// and keeps at most 8 batches of at most 256 KiB in flight (2 MiB: what a loopback or LAN TCP
// buffer pair absorbs, so a writer that stops reading does not make the
// ROUTER socket's writes block, which would stall every subscriber: zmq4
// holds the socket's lock during each write; a 2 s send timeout is the
// backstop). What one read returns (whole records: a group commit can make
// one larger than 256 KiB) goes as protocol batches of consecutive
// sequences and at most 256 KiB of PublishBatches each, unless one entry
// is larger: a writer appends a batch as one record of its queue (in
// pieces since issue 20), and a batch larger than its whole bound was
// refused as full on every resend (issue 20's stall). A batch is resent after 5 s without ack (with backoff, 50 ms
// doubling to 5 s), after busy (same backoff), and all in flight at once
// when the subscriber subscribes from a new identity or comes back after
// 3 s of silence; a silent subscriber is sent nothing. An acked batch moves
// the cursor; the log removes what every cursor has passed. A sender
// whose cursor has been full for 30 s logs its state once a minute
// (stuck.go): connected, batches held, runs in flight and waiting, the
// largest, busy answers and the last one's reason. The log's
// sequences jump across router restarts (and from a migrated subscriber
// queue's to the log's); writers must not expect them to be contiguous.
//
// Why not a PUB socket for the store lane: a zmq4 PUB has one writer
// goroutine doing blocking writes to each subscriber in turn, so one slow
// subscriber stalls all; with an HWM it drops silently for everyone, and
// Send returns nil while dropping. With a cursor and a window per
// subscriber each writer drains at its own pace, and a dead writer holds
// back only its own cursor (and the log's disk space).
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
// the durable lane waits on; it is appended to the buffer of every
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
// drover_router_subscriber_connected{subscriber}, the log's drover_queue_*
// with queue="router" (depth = the log's size, bound, fill ratio, the
// volume's free bytes), and per subscriber its cursor's
// drover_queue_cursor_{lag_entries,lag_bytes,fill_ratio,inflight_entries}
// {queue="router",cursor="<name>"} (lag = what that writer is behind).
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
// (frontends and writers see it down), stops the live lane (nothing more
// is offered live), sends live subscribers what their buffers hold (for up
// to a second) and closes the live lane, stops the subscriber senders
// (what they have in flight is sent again after a restart) and closes
// their cursors (writing their positions), answers new batches busy, waits for the
// appends under way and sends their acks, closes its sockets, writes a
// compact journal and closes the main queue.
//
// Ready is nil only while the main queue (with the subscribers' cursors)
// and the three sockets are open and bound.
package router
