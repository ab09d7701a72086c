// Package lake is the storage writer's Parquet sink: it writes enriched
// records as Parquet files partitioned by the hour of the reading's device
// time, in a local folder or in Azure Blob Storage (ADLS Gen2 included).
// docs/lake.md is the user's guide: layout, schema, queries, sizes.
//
// # Layout
//
//	ROOT/date=YYYY-MM-DD/hour=HH/<writer>-<unix nanos, 19 digits>-<counter, 6 digits>.parquet
//	DIR/_tmp/<writer>/build-*.tmp        files being built (and Azure downloads)
//	DIR/_journal/<writer>/<nanos>.json   compactions in progress
//
// ROOT is the local folder (DIR) or the Azure container (and folder). Names
// sort in creation order and are unique per writer; each sink compacts only
// the files that carry its own writer name. _tmp and _journal are skipped by
// Spark and Hive (leading '_'), and their files do not end in .parquet, so a
// "**/*.parquet" glob (DuckDB) never sees them.
//
// # Durability contract
//
// Write returns nil only when every record given to it is in a complete,
// durable file under its final name. Each call converts the records (a
// record that cannot be converted fails the whole call with
// [sink.Permanent], writing nothing), groups them by partition, and for each
// partition builds one Parquet file in DIR/_tmp/<writer>/, closes it
// (footer written), then publishes it:
//
//   - local folder: fsync the file; create the partition folders, fsyncing
//     the parent of each folder created; rename(2) the file to its final
//     name; fsync the partition folder;
//   - Azure: upload it as a block blob with If-None-Match: *. A blob up to
//     256 MiB is one Put Blob, a larger one staged blocks and one Put Block
//     List: either way it appears whole at the final call's success, and
//     never in part.
//
// So a file is visible under a .parquet name only when complete. A crash at
// any point leaves complete files and, at worst, files in _tmp, which [New]
// removes; their records were not acknowledged, so the storage writer sends
// them again. A failure after publishing (a lost Azure answer, a folder fsync
// error) makes Write fail although the file is there: the retry writes the
// rows again under a new name. Rows are keyed by (device_id, seq), and
// queries drop such duplicates exactly (docs/lake.md).
//
// Write leaves nothing pending: Close has nothing to flush. The price is one
// file per partition per Write, i.e. small files at low rates; compaction
// makes them big.
//
// # Compaction
//
// A background pass every CompactInterval ([Sink.Compact]) merges small
// files of the same partition. While the hour is open, the newest files are
// merged once CompactMinFiles of them can go together, a merged file joining
// again only with about as much new data as it holds (so sizes double and a
// row is rewritten a logarithmic number of times); after the hour and a
// grace period, every file below TargetFileSize is merged into files of
// TargetFileSize. A merge builds its outputs in _tmp,
// writes a journal naming inputs and outputs (fsynced), publishes the
// outputs as Write does, removes the inputs and then the journal. The next
// pass after a crash or an error finishes the merge (every output is there:
// remove the inputs) or undoes it (remove the outputs that are there), so no
// row stays in the lake twice because of compaction and none is lost.
//
// # Failpoints
//
// The durability path calls a test hook at named points (before-sync,
// before-rename, after-rename, compact-journaled, compact-before-remove);
// crash_test.go stops a Write or a compaction at each and checks what a
// restart finds, and kills a child process at random moments (kill -9).
//
// One sink per writer name: two processes with the same name on one folder
// would remove each other's files in _tmp.
package lake
