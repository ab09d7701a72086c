// Package forward is the frontend → router hop: the wire protocol both ends
// speak over ZeroMQ, the frontend's [Drainer], the [Dealer] (one DEALER
// connection to one router, which the drainer and the storage writer
// share), and the helpers the router uses to decode batches and build its
// queue entries ([Decode], [AppendStored], [ParseStored], [CountRecords],
// [SeqSet]), so that both ends share one codec.
//
// # The links
//
// Every connection is a cluster link (internal/clusterlink): ZMTP over
// mutual TLS 1.3 under the cluster key, DrainerConfig.Links (or plain ZMTP
// with -insecure-links). A [Dealer] takes the component's Security and the
// link (clusterlink.LinkIngest for the drainer, LinkStore for a storage
// writer) and dials the endpoint through it; the endpoints in flags stay
// tcp://host:port. A router without the cluster key, or with another one,
// is never connected to: its heartbeats go unanswered and it counts as
// down, and the refusal is counted (drover_link_refused_total) and logged
// by the link.
//
// # Why the protocol looks like this
//
// go-zeromq/zmq4 (v0.17.0) delivers nothing reliably on its own: Send
// returns nil while it drops a message (no connection yet, a peer
// restarting, an unknown ROUTER identity), and a DEALER writes each message
// to all of its connections. So the drainer opens one DEALER per router
// endpoint, every batch names the sequences it carries, a router acks a
// batch only once it is durable in its own queue, and the drainer removes
// entries from its queue only when a router acked them. Whatever zmq4
// drops is sent again after a timeout, after the router is seen down, or
// after it is seen restarted. Duplicates are expected; routers drop them by
// (sender, queue sequence), and the sinks downstream are idempotent.
//
// # Wire protocol, version 1
//
// Every message is one multipart ZeroMQ message whose first frame is a
// header. A ROUTER prepends the peer's identity frame on receipt and takes
// it off on send; that frame is not part of the protocol. Integers are
// big-endian.
//
//	header     = version:uint8 type:uint8 body
//	batch      type 1  body = first:uint64 last:uint64 sender:bytes   frames 2.. = entries
//	ack        type 2  body = first:uint64 last:uint64
//	busy       type 3  body = first:uint64 last:uint64 reason:utf8
//	reject     type 4  body = first:uint64 last:uint64 reason:utf8
//	ping       type 5  body = nonce:uint64
//	pong       type 6  body = nonce:uint64 incarnation:uint64 router:bytes
//	subscribe  type 7  body = nonce:uint64 name:bytes
//	packed     type 8  body = first:uint64 last:uint64 sender:bytes   frame 2 = entries, each uvarint length + bytes
//
// packed (type 8) is a batch with all its entries in one frame, each
// preceded by its length (uvarint); Decode returns it as a batch
// (Message.Type TypeBatch, Packed true), so receivers handle both alike.
// zmq4 reads every frame with its own read(2) calls: the drainer sends
// packed batches, which doubled the frontend → router hop's throughput
// here (BenchmarkDrainToRouter, sync=never, inflight=16: ~236k → ~460k
// entries/s). A router older than type 8 ignores it (counted) and the
// frontend times out: upgrade routers first, as the versioning rules say.
//
// batch (frontend → router): one frame per entry of the sender's queue,
// entries first..last in order (last-first+1 frames, at most [MaxEntries]).
// Each entry is a serialized telemetry.Batch holding only records (one
// device frame's worth). sender is the frontend's stable ID
// (daemon.ValidateID: 1 to 253 bytes). first > 0, first <= last.
//
// ack (router → frontend): every entry first..last of the batch that named
// this range is durable at the router (its append returned after fsync).
//
// busy (router → frontend): the router did not take the batch: its queue
// is full, its disk is failing, too many batches are being stored, or it is
// stopping. Nothing is promised; keep the entries and resend later, with
// backoff. reason is for logs; at most [MaxReasonLen] bytes.
//
// reject (router → frontend): the batch breaks the protocol (a frame that
// is not a telemetry.Batch, an entry larger than a router record, a batch
// over the router's -max-batch-bytes). Resending it unchanged fails again;
// the drainer still never drops it (nothing leaves the frontend queue
// unacked): it logs an error and retries with backoff, so that an operator
// sees it and fixes the cause.
//
// ping (frontend → router) every DrainerConfig.Heartbeat; the router answers
// pong, echoing nonce, with its ID and its incarnation: a random number
// chosen at each start. A frontend that sees the incarnation change knows
// the router restarted, and resends at once what it had in flight there
// (the router may have lost it with its old process). A router that is
// stopping stops answering pings.
//
// Versioning. version is the layout of the header. A receiver drops a
// message whose version it does not speak, counting it
// (drover_router_bad_messages_total{reason="version"},
// drover_forward_bad_messages_total): the sender then hears no pong and no
// ack, counts that router as down and times out; so upgrade routers before
// frontends when the version changes. New message types may be added within
// a version: a receiver ignores (and counts) a type it does not know. New
// fields go at the end of a body (a router's ID and a reason already end
// theirs, so a new field needs a new version or type).
//
// # The store lane (router → durable subscribers)
//
// The same version-1 messages carry the router's durable lane to the
// storage writers, with the roles reversed, plus one type. The router binds
// a ROUTER socket (-store-listen); each writer connects one DEALER per
// router (zmq4 v0.17.0's DEALER copies each message to all its connections),
// with an identity of its own per socket (see below).
//
//	subscribe  (writer → router)  nonce, name
//	pong       (router → writer)  nonce, incarnation, router
//	batch      (router → writer)  first..last, sender = router ID, frames = PublishBatch
//	           (or packed: the same in one frame; forward.Decode reads both)
//	ack        (writer → router)  first..last
//	busy       (writer → router)  first..last, reason
//
// subscribe names the durable subscriber (name: 1 to 64 bytes of a-z, 0-9,
// '_', '-', not starting with '_' or '-'; see [ValidateSubscriberName]) and
// is sent on connect and then every heartbeat (1 s). The router answers pong
// (as to a ping). A name it does not know is refused (logged once; it is
// sent nothing) unless the router runs -fixed-subscribers=false, which only
// holders of the cluster key can reach; then it registers the name: from
// then on it keeps a queue for it (QUEUE_DIR/subs/<name>/ at the router) until the
// subscriber has not been heard from for the router's retention. A
// subscribe is also what tells the router where (which ZeroMQ identity) to
// send that subscriber's batches: the router sends nothing to a subscriber
// before its first subscribe, sends to the identity of its latest
// subscribe, and sends again everything in flight when that identity
// changes (a new writer process or socket) or when the subscriber comes
// back after DownAfter (3 s) without a subscribe. So a writer gives its
// DEALER an identity unique per socket (zmq4's default, a random UUID, or
// name + random suffix), never a fixed one: with two connections under one
// identity a zmq4 ROUTER writes to both. Only one writer process should
// subscribe under a name at a time; two would take turns receiving
// batches (each subscribe moves the flow to its sender) and both ack.
//
// batch: entries first..last of the router's queue FOR THAT SUBSCRIBER
// (each subscriber has its own queue and sequence numbers at the router),
// one frame per entry, in order; sender is the router's ID. Each entry is a
// serialized telemetry.PublishBatch{router, seq, records}: router ID, the
// sequence of the router's main-queue entry it came from (increasing per
// router, never reused; for dedup and tracing, not the subscriber-queue
// sequence), and the enriched records. A main entry too large for one
// PublishBatch (past 3 MiB, or a quarter of the router's
// -subscriber-queue-max-bytes) is split into several with the same seq,
// so (router, seq) names a main entry, not one PublishBatch: dedup
// readings by (device, reading seq).
// Sequences of a subscriber queue jump after a router restart (as a
// frontend's do): a writer must not expect first to follow the last batch.
//
// ack (writer → router): the writer has appended entries first..last to its
// own durable queue (fsynced). The router then removes them from that
// subscriber's queue. Acks are by range: the router counts as acked every
// batch it sent whose first..last lies within the ack's range, so a writer
// acks each batch with its own first..last (or a covering range, after
// appending all of it). An ack for a range the router no longer has in
// flight (late, or after a resend) is harmless.
//
// busy (writer → router): the writer did not take first..last (its queue
// is full, its disk failing, it is stopping). The router keeps them and
// resends later, with backoff.
//
// The router keeps a bounded window of batches in flight per subscriber
// (so that no subscriber's TCP buffer can block the ROUTER socket's
// writes) and resends a batch not acked in time, and everything in flight
// when it sees a new incarnation of the writer (its subscribe comes from a
// new ZeroMQ identity). A writer sees a router restart by the pong's
// incarnation, as frontends do; it needs to do nothing about it but go on
// subscribing and acking: the router resends what was not acked.
// After a resend, batches may arrive twice and out of order (a resent
// batch after a later one). Duplicates happen (resend after a lost ack,
// router restart, a crash of the router between fan-out and its own ack):
// writers and sinks dedup or are idempotent by (router, PublishBatch.seq)
// and by (device, reading seq). A writer acks a batch it received twice as
// it acked it the first time. Receiver (receiver.go) is that receiving
// side, shared by the storage writers and the alerts engine: dedup by
// (router, seq), appends in each router's order, acks once durable.
//
// # The router's queue entry
//
// For a stored run first..last, the router appends the run's entries
// concatenated, followed by a serialized telemetry.Batch{Sender, Seq:
// first, LastSeq: last} ([AppendStored]). Protobuf merges concatenated
// messages (repeated fields append, scalars take the last value), so the
// entry decodes as one Batch with every record and the header, and no
// record is decoded on the way. [ParseStored] reads the header back by
// walking top-level fields.
//
// # The drainer
//
// [Drainer.Run] reads queue batches of up to MaxBatchBytes and keeps up to
// MaxInflight of them read and not yet acked. After a batch smaller than
// half of MaxBatchBytes it waits Linger (10 ms) before it reads again: under
// light load a frontend group-commits up to a thousand times a second, and
// sending each commit as its own batch made the router do a batch's work
// (receive, fsync, fan-out, live, ack) as often. At 2 ms the linger halved
// the router's fsyncs at 10,000 readings/s; at 10 ms the router's CPU at
// 30,000 sparse devices fell by more than half again and the live lane with
// 500 clients met its 50 ms p99 on the servers' one core (docs/performance.md,
// "The drainer's linger"). It costs the device nothing (its ack comes from
// the frontend's fsync) and adds at most Linger to the router's copy and to
// the live lane; under heavy load batches are full and nothing waits.
// A queue batch is split into
// runs of consecutive sequences (sequences jump across a queue restart),
// and every run of it goes, as one protocol batch, to one router: the
// preferred router when it is up and not backing off, else the next in
// the order of preference that is. The order is rendezvous hashing of
// (Sender, endpoint): frontends spread over the routers, and a router that
// joins or leaves the endpoint list moves only the frontends that prefer
// it. With a dns+tcp:// entry in Routers (internal/endpoints) the list
// follows DNS while the drainer runs: a router that appears is dialled, one
// that disappears is let go and what it had in flight is given back at
// once (its late acks still count). A router is up from its first pong until DownAfter passes
// without one. The queue batch is acked (removed) when every run of it has
// been acked; it is given back (queue.Nack, read again, maybe grouped
// differently) when its router goes down or restarts, and on ack timeout,
// busy or reject, after which that router backs off (50 ms doubling to 5 s,
// jittered, reset by its next ack) and the other routers that are up get
// the batches meanwhile: a router whose disk hangs still answers pings, and
// must not hold a frontend's stream. Acks are remembered as ranges: an ack
// that arrives after its batch was given up, or one covering a different
// grouping of the same sequences, still counts, because those entries are
// durable at that router. With no router up the drainer waits, holding at
// most MaxInflight batches, and sends as soon as a pong arrives.
//
// Metrics (drover_forward_*): sent_{batches,entries,bytes}_total,
// acked_{batches,entries,bytes}_total, resent_batches_total{reason=timeout|
// router_down|busy|rejected}, late_acks_total, ack_latency_seconds,
// inflight_batches, waiting_batches, routers_up, router_down_total,
// bad_messages_total{reason}, removed_entries_total.
//
// # zmq4 behaviour this package relies on (read from v0.17.0's source)
//
//   - Dial with WithDialerMaxRetries(-1) blocks until it connects: the
//     drainer dials in a goroutine; WithAutomaticReconnect redials from the
//     goroutine that saw the connection fail.
//   - A connection that fails under a Send reconnects from inside that Send
//     while the socket's writer lock is held: the new connection is added
//     only when that Send times out. WithTimeout is therefore short (twice
//     the heartbeat, 250 ms to 2 s). A timed-out write goes on in the
//     background while the next Send starts; zmq4 writes a message in
//     several calls, so the cluster link's connection gathers each message
//     and writes it with one call under a lock (TLS would otherwise
//     interleave two messages' records; on TCP, SendMulti's writev(2) did
//     the same).
//   - Recv returns an error for each lost connection (after the reconnect)
//     and keeps working; it ends only when the socket's context is done.
//   - A ROUTER holds its lock for each network write, and answers a stalled
//     peer only when that write times out: one stalled frontend delays the
//     router's answers to all.
//   - Listen on port 0 works; Addr returns the bound address.
//   - Every frame is read with its own read(2) calls (no buffering): a batch
//     of n entries costs the router about 2n+2 reads; a packed batch about
//     6 (hence type 8).
package forward
