// Package storagewriter is a named durable subscriber of drover's store.
// lane. It subscribes to every router, appends what it receives to its own
// durable queue, acks each router only after fsync, and writes to its sink in
// batches, popping from its queue only what the sink has confirmed:
//
//   - influx: InfluxDB through the v2 write API, each point keyed by device
//     and sequence so that a duplicate overwrites itself;
//   - lake: Parquet files partitioned by date and hour, in a local folder or
//     in Azure Blob Storage, each row carrying the key so that a query can
//     drop duplicates exactly.
//
// A dead sink grows only its own writer's queue: ingest, the other sinks and
// the live feed go on, until that queue (-queue-max-bytes, by default a
// share of its volume) and the router's queue for this writer are full too;
// docs/reliability.md ("Sink outages") says how long that is and what comes
// next.
//
// The writer opens one ZeroMQ DEALER per router (a forward.Subscription of
// forward.Dealers, over the store link's mutual TLS under the cluster key:
// Config.Links, -cluster-key-file; docs/security.md), subscribes under its
// durable name (forward.TypeSubscribe, every second), and hands each batch
// to a forward.Receiver (receive.go; the alerts engine has the same two).
// The receiver drops entries appended before (a forward.SeqSet per
// router), appends the rest in goroutines so that the receive loop never
// waits on fsync, and answers each batch with an ack once it is durable,
// or busy when its queue is full or its disk fails. A router's batches take their places in the queue in
// the order they arrived (queue.Begin: a batch begins its first append
// once the router's previous batch has begun its last), as they sit in the
// router's log, and still share group commits. A batch is appended in pieces of at most a quarter of
// the queue's bound (and of a record), each recorded as done, so that one
// larger than the room left is taken piece by piece as the sink drains the
// queue; one entry is appended whole, and one larger than the whole bound
// is refused for good (busy, reason over_bound, an error logged once a
// minute) while the router keeps it. One sink loop gathers up to Config.BatchRecords records
// or Config.BatchInterval worth, writes them, and acks the queue only when
// the sink returned nil. Transient sink errors are retried with jittered
// exponential backoff; records the sink refuses for good are isolated by
// bisection and written to the dead-letter store (see [DeadLetter]): JSON
// lines fsynced before the records leave the queue, in files rotated by
// size and age, removed only past an explicit bound (each removal logged
// and counted). [Replay] (drover storage-writer replay) writes them to the
// sink again once the cause is fixed. docs/storage-writer.md is the
// operator's guide.
//
// The package is a library: cmd/drover builds a [Writer] from a [Config] with
// [New] and runs it with [Writer.Run].
package storagewriter
