// Package queue is drover's durable queue: an append-only, ack-gated FIFO of
// opaque byte entries on local disk, built on github.com/joncrlsn/dque.
//
// Every hop of drover (frontend, router, storage writer) owns one Queue. A
// device, a frontend or a router is told "stored" only after the entry it sent
// is in the receiver's Queue and fsynced; the receiver then drains its Queue
// downstream and removes an entry only when the next hop has said the same.
// This file is the contract; the tests named below hold the code to it.
//
// # Layout on disk
//
//	DIR/LOCK               flock(2)-held while a process has the queue open
//	DIR/seq                highest entry sequence reserved (8 bytes LE + CRC-32C)
//	DIR/segments/          dque's folder: 0000000000001.dque, 0000000000002.dque, ...
//	DIR/quarantine/        copies of damaged segments, moved aside at open
//	DIR/cursors/NAME       a named cursor's position (segment, offset, CRC-32C)
//
// # Record framing
//
// One dque item is one record: the entries of one or more Append calls that
// were committed together (group commit). dque writes an item as a 4-byte
// little-endian length followed by a gob message; a length of 0 is a delete
// marker that removes the oldest item of that segment file. Our gob type
// implements GobEncoder, so the gob message ends with the raw record:
//
//	entries   repeated { uvarint length, bytes }
//	seq       uint64 LE   sequence number of the first entry
//	n         uint32 LE   number of entries (0: a filler record, see below)
//	dataLen   uint32 LE   length of the entries part
//	crc       uint32 LE   CRC-32C (Castagnoli) of entries, seq, n, dataLen
//	magic     uint32 LE   "drv1"
//
// The trailer lets the reader find and verify a record without decoding gob
// (decoding a gob message with a fresh decoder costs ~11 µs; dque uses a fresh
// encoder per item, so every item carries its own type description).
//
// Sequence numbers are per queue, strictly increasing across restarts, and
// never reused, even after the queue has emptied and dque has deleted every
// segment: Open resumes after both the highest sequence found on disk and the
// reservation kept in DIR/seq (reserved in steps of 1<<20, one extra fsync per
// million entries). Downstream hops use them to drop duplicates.
//
// A new queue — an empty directory, or one whose reservation is unreadable
// and whose segments hold nothing — starts at a random base between 2^20
// and 2^62 rather than at 1. Consumers deduplicate by (producer name,
// sequence) and remember what they stored; a producer whose directory was
// wiped (a lost volume, a subscriber queue deleted after its retention and
// registered again) keeps its name, and restarting at 1 would make its new
// entries look like ones stored long ago: acked, and dropped. With a random
// base the new numbers land far from the old ones (a collision needs the
// new base within the old range: odds about 2^-22 per wipe for a queue that
// went through a trillion entries).
//
// # When fsync happens (SyncAlways, the default)
//
// Appenders hand their entries to a single committer goroutine. While it is
// writing and syncing one group, new appends gather into the next group, so
// one fsync covers every append that arrived during the previous one (group
// commit): with 256 concurrent appenders of 200-byte entries one fsync covers
// ~126 entries (BenchmarkAppend reports entries/fsync). The committer enqueues the group's record(s) with dque in
// turbo mode (write, no sync), then fsyncs the segment file it wrote — and the
// previous one, if the group crossed a segment rollover — and the segments
// directory when a new segment file was created, and only then returns from
// the Append calls of that group. Append returning nil therefore means: on
// disk, surviving kill -9 and power loss.
//
// SyncNever skips the fsyncs: Append returns once the write(2) is done, which
// survives kill -9 of the process (the page cache belongs to the kernel) but
// not the loss of the machine. It exists for benchmarks and for operators who
// choose it knowingly; drover's components default to SyncAlways.
//
// Delete markers (written by Ack) are not fsynced on the hot path: they are
// synced at most every Options.RemovalSyncInterval. A marker lost to a power
// cut only means an entry is delivered again: at least once, never less.
//
// # Draining
//
// The consumer calls Read, which returns the next committed entries (whole
// records, several merged up to a byte budget, so a backlog of tiny records
// drains in large sends), then Ack when the next hop has them durably, or Nack
// / Rewind to have them returned again by Read. Several batches may be in
// flight at once and acked in any order; records are removed from the head,
// in order, as soon as every record before them is acked too. dque can only
// peek its head, so the reader does not read through dque: it reads the
// segment files itself, sequentially, up to the last committed record, and
// dque is used only to append and to remove the head. What was read but not
// yet acked is held in memory (bounded by what the consumer keeps in flight).
// After a restart everything not removed is read again: downstream hops see
// it twice and drop it by sequence number or by key.
//
// A Tail (Queue.Tail) follows what is committed from the moment it is made
// with a cursor of its own, outside the consumer's window: it holds and
// removes nothing, so it goes on while the consumer waits on its own
// downstream (the router's live lane follows the main queue this way while
// its durable fan-out is blocked). It is best effort: each committed record
// at most once, and segments removed before it read them are skipped.
//
// # Cursors: one queue, several readers
//
// A queue read by several consumers at their own pace (the router's log,
// read by each durable subscriber) gives each a named Cursor
// (Queue.OpenCursor): a window of its own (Read, Ack, Nack, Rewind, as
// above) and a durable position, the end of the records it has acked
// without a gap. While a queue has cursors, a record is removed only when
// every cursor has passed it (the remover finds the records between the
// head and the slowest cursor by reading only their lengths and trailers),
// and the queue's own consumer's acks remove nothing; Queue.Scan reads
// everything held without taking it from anyone.
//
//   - A cursor's position is in DIR/cursors/NAME, replaced atomically
//     (atomicfile) with a CRC, at most every Options.RemovalSyncInterval
//     and at Cursor.Close. It is never ahead of what the cursor acked, so a
//     lost update delivers again (at least once, never less).
//   - A new cursor starts at the tail (what is appended from then on) or,
//     with StartHead, at the head; its file is written before OpenCursor
//     returns, so that a crash cannot let the head pass a cursor the next
//     Open would not know. Every cursor file found at Open holds the head
//     back, opened again or not, until Queue.DeleteCursor.
//   - Open checks each position against the records: a torn or damaged
//     file starts the cursor at the head (queue_repairs_total{kind=
//     "cursor_damaged"}); a position older than the head (its records were
//     removed, which needs every cursor past them), past the committed end,
//     or inside a record is moved to the record boundary at or before it
//     (kind="cursor_moved").
//   - Cursor.Lag is what a cursor has not passed; past CursorOptions.MaxBytes
//     (default: the queue's bound) Cursor.Full says so. A full cursor stops
//     nothing by itself: it holds the queue's head, and the queue's own
//     bound is what refuses appends. Metrics per cursor:
//     drover_queue_cursor_{lag_entries,lag_bytes,fill_ratio,inflight_entries}
//     and drover_queue_cursor_redelivered_entries_total, labelled cursor.
//
// TestCursorsReadAtTheirOwnPace, TestCursorRepair and
// TestCrashKill9Cursors (two cursors, SIGKILL at random moments) hold this.
//
// # What a crash can leave, and how Open repairs it
//
// Open takes DIR/LOCK (a second process gets ErrLocked), then scans every
// segment, verifying each record's CRC, before dque is allowed to open it:
//
//   - torn tail: a length without its body, a partial length, or a last record
//     that fails its CRC — left by a crash between dque's two write(2) calls.
//     Such a record was never acknowledged; the file is truncated before it.
//   - damaged record not at the end (bit rot, a foreign write): the segment is
//     copied into DIR/quarantine/ (an error log, queue_quarantined_segments_total)
//     and cut before the damage, keeping every record before it; what followed
//     the damage in that segment is lost and logged with its size.
//   - excess delete markers (more markers than items; dque refuses to open
//     such a segment): the excess markers are dropped.
//   - a consumed segment that was never deleted (crash between the last
//     marker and the unlink; dque would then report Size() > 0 while Dequeue
//     says empty forever): deleted.
//   - a missing segment file between two others (dque would stop at the gap),
//     and a middle segment with fewer items than dque expects (after a cut, or
//     after ItemsPerSegment was changed): padded with filler records (n = 0)
//     that the reader skips and removes by itself, so dque moves past them.
//
// None of these stop the queue: it opens, says what it repaired (logs and
// queue_repairs_total{kind}), and goes on. A segment dque still refuses after
// that is a bug, and Open returns the error rather than guess.
//
// # Bounds and back-pressure
//
// Options.MaxBytes and Options.MaxEntries bound the live content (appended
// and not yet removed). An Append that would cross a bound fails at once with
// ErrFull; the caller turns that into back-pressure (stop acking upstream).
//
// MaxBytes 0 (the default) sizes the queue from its volume at Open: the
// auto-bounded queues open in one process on one filesystem split
//
//	share × (free + held)
//
// equally, with a floor of MinAutoBytes (64 MiB) each: free is what statfs
// says is available there, held what those queues' files hold already (so
// a queue reopened in the middle of an outage keeps its bound), share is
// Options.DiskShare (DefaultDiskShare, 0.8). The split is redone when an
// auto-bounded queue opens or closes on that volume (a router registering a
// subscriber gives every queue on its volume a smaller share). Other
// processes, explicitly bounded queues and other files on the volume are not
// counted: the volume can still fill first, and a full disk is the same
// back-pressure (ErrDiskFull). Bounds count entry bytes; the files hold a
// little more (record framing, and the consumed records of the head segment
// until that whole segment is consumed), which the share's headroom covers.
// Queue.MaxBytes returns the bound in effect.
//
// Metrics of fill: drover_queue_depth_bytes, drover_queue_max_bytes (-1 when
// unbounded), drover_queue_fill_ratio (their ratio; 1 is full) and
// drover_queue_volume_{free,size}_bytes (statfs, every 10 s).
// A write or sync error (disk full, EFBIG, EIO) fails the appends of that group
// with ErrStorage (errors.Is(err, ErrDiskFull) when the disk is full), and the
// queue repairs its tail and retries in the background; until that works,
// Append fails fast with the same error. Nothing is dropped: an Append either
// returns nil (stored) or an error (not acknowledged; the caller must retry).
//
// The tests that hold this contract: TestCrashKill9 (a child process killed
// with SIGKILL at random moments, then checked), TestRepairDamage (a table of
// damage cases), TestDiskFull (RLIMIT_FSIZE in a child process).
package queue
