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
// the live feed go on. The folder is storage-writer/ and the package is
// storagewriter; import it by that name.
//
// The package is a library: cmd/drover builds a [Writer] from a [Config] with
// [New] and runs it with [Writer.Run].
package storagewriter
