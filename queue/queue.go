package queue

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/joncrlsn/dque"
	"github.com/prometheus/client_golang/prometheus"
)

const (
	segmentsName = "segments"
	seqStep      = 1 << 20
)

// Queue is a durable FIFO of byte entries. Append is safe for any number of
// goroutines; Read, Ack, Nack and Rewind are safe too, though a queue normally
// has one consumer. See doc.go for the contract.
type Queue struct {
	opts   Options
	dir    string
	segDir string
	qDir   string
	log    *slog.Logger
	m      *metrics
	lockF  *os.File
	dev    uint64 // the volume's device number, for auto bounds

	dqMu sync.Mutex // serialises every call into dq, and its replacement
	dq   *dque.DQue

	// Append side, guarded by mu.
	mu          sync.Mutex
	closed      bool
	failed      error // non-nil while the disk fails: appends fail fast
	maxBytes    int64 // bound on liveBytes+pendBytes; negative: none (bound.go)
	pending     *group
	sealed      []*group
	liveEntries int64 // committed, not removed
	liveBytes   int64
	pendEntries int64 // accepted, not yet committed
	pendBytes   int64

	kick chan struct{}

	// Owned by the committer goroutine.
	nextSeq     uint64
	reservedSeq uint64
	tailNum     int
	tailF       *os.File

	// Read side, guarded by rmu.
	rmu       sync.Mutex
	rclosed   bool
	committed pos      // end of the last committed record
	cons      consumer // the queue's own consumer (Read, Ack, ...)
	avail     chan struct{}
	// committedEntries and committedBytes count what was committed since
	// Open: a Cursor's lag is what it has not passed of them.
	committedEntries, committedBytes int64
	// head is the position after the last record removed; the remover
	// alone moves it (after Open).
	head pos
	// cursors are the named cursors (cursor.go), loaded at Open from
	// DIR/cursors/ or made by OpenCursor. While there is one, records are
	// removed when every cursor has passed them, not by the queue's own
	// consumer's acks.
	cursors map[string]*Cursor
	// curMu orders cursor files' writes, creations and deletions.
	curMu sync.Mutex

	removeKick    chan struct{}
	stop          chan struct{}
	committerDone chan struct{}
	removerDone   chan struct{}
	closeOnce     sync.Once
	closeErr      error
}

type pos struct {
	seg int
	off int64
}

func (p pos) before(o pos) bool { return p.seg < o.seg || (p.seg == o.seg && p.off < o.off) }

// group is the appends that will be written as one record.
type group struct {
	entries  [][]byte
	bytes    int
	firstSeq uint64
	err      error
	done     chan struct{}
}

// Entry is one appended entry as the consumer reads it.
type Entry struct {
	// Seq is the entry's sequence number, unique and increasing in this
	// queue for its whole life, restarts included.
	Seq uint64
	// Data is what was appended. Valid until the batch is acked.
	Data []byte
}

// Batch is what one Read returns: entries of one or more whole records, in
// order. Ack, Nack it as a whole.
type Batch struct {
	Entries []Entry
	Bytes   int
	recs    []*inflight
}

type recState uint8

const (
	stateSent recState = iota
	stateResend
	stateAcked
)

type inflight struct {
	entries []Entry
	bytes   int64
	state   recState
	end     pos // where the record ends in the segment files
}

// Open opens (or creates) the queue in dir, repairing whatever a crash left
// (see doc.go). logger and reg may be nil.
func Open(dir string, opts Options, logger *slog.Logger, reg prometheus.Registerer) (*Queue, error) {
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("queue options: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("queue", opts.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create queue dir: %w", err)
	}
	q := &Queue{
		opts:          opts,
		dir:           dir,
		segDir:        filepath.Join(dir, segmentsName),
		cons:          consumer{rd: segReader{segDir: filepath.Join(dir, segmentsName)}},
		cursors:       map[string]*Cursor{},
		qDir:          filepath.Join(dir, "quarantine"),
		log:           logger,
		m:             newMetrics(opts.Name, reg),
		kick:          make(chan struct{}, 1),
		removeKick:    make(chan struct{}, 1),
		stop:          make(chan struct{}),
		committerDone: make(chan struct{}),
		removerDone:   make(chan struct{}),
		avail:         make(chan struct{}),
	}
	q.cons.inflightGauge, q.cons.redelivered = q.m.inflight, q.m.redelivered
	lockF, err := lockDir(filepath.Join(dir, "LOCK"))
	if err != nil {
		return nil, err
	}
	q.lockF = lockF
	q.maxBytes = opts.MaxBytes
	if err := q.open(); err != nil {
		lockF.Close()
		return nil, err
	}
	if q.auto() {
		if err := q.joinVolume(); err != nil {
			_ = q.dq.Close()
			q.tailF.Close()
			lockF.Close()
			return nil, fmt.Errorf("size queue %s from its volume (give it a bound instead): %w", dir, err)
		}
	} else {
		q.setBound(opts.MaxBytes)
	}
	q.refreshVolumeFree()
	if err := q.loadCursors(); err != nil {
		q.leaveVolume()
		_ = q.dq.Close()
		q.tailF.Close()
		lockF.Close()
		return nil, err
	}
	go q.commitLoop()
	go q.removeLoop()
	return q, nil
}

// open repairs the segments, opens dque and sets the read and write state.
// It runs at Open and again after a storage failure.
func (q *Queue) open() error {
	res, err := repairSegments(q.segDir, q.qDir, q.opts.ItemsPerSegment, q.opts.MaxRecordBytes+4096, q.log)
	if err != nil {
		return fmt.Errorf("repair queue %s: %w", q.dir, err)
	}
	for kind, n := range res.repairs {
		q.m.repairs.WithLabelValues(kind).Add(float64(n))
		if kind == repairQuarantine {
			q.m.quarantined.Add(float64(n))
		}
	}
	dq, err := dque.NewOrOpen(segmentsName, q.dir, q.opts.ItemsPerSegment, newRecordObject)
	if err != nil {
		return fmt.Errorf("open dque in %s: %w", q.dir, err)
	}
	if err := dq.TurboOn(); err != nil {
		return fmt.Errorf("dque turbo: %w", err)
	}
	first, last := dq.SegmentNumbers()
	if res.first != 0 && (res.first != first || res.last != last) {
		return fmt.Errorf("queue %s: dque opened segments %d..%d, repair saw %d..%d", q.dir, first, last, res.first, res.last)
	}
	tailF, err := os.Open(segmentFile(q.segDir, last))
	if err != nil {
		return fmt.Errorf("open tail segment: %w", err)
	}
	st, err := tailF.Stat()
	if err != nil {
		tailF.Close()
		return fmt.Errorf("stat tail segment: %w", err)
	}
	if q.opts.Sync == SyncAlways && res.first == 0 {
		// dque just created the segments folder and its first file.
		if err := syncDir(q.segDir); err != nil {
			tailF.Close()
			return err
		}
		if err := syncDir(q.dir); err != nil {
			tailF.Close()
			return err
		}
	}

	reserved, err := readSeqFile(filepath.Join(q.dir, "seq"))
	if err != nil {
		q.log.Warn("queue: sequence reservation unreadable; using what the segments hold", "err", err)
	}
	next := max(reserved, res.maxSeq, q.nextSeq)
	if next == 0 {
		next = newQueueBase() // a new queue (doc.go: sequence numbers)
	}

	q.dqMu.Lock()
	if q.dq != nil {
		_ = q.dq.Close()
	}
	q.dq = dq
	q.dqMu.Unlock()
	if q.tailF != nil {
		q.tailF.Close()
	}
	q.tailF, q.tailNum = tailF, last
	q.nextSeq, q.reservedSeq = next, next

	q.rmu.Lock()
	q.committed = pos{last, st.Size()}
	if q.cons.rd.cursor.seg == 0 {
		// First open: read from the first live record. (After a storage
		// failure the reader keeps its place: a repair only cuts beyond
		// what was committed.)
		q.head = pos{first, res.headOff}
		if res.first == 0 {
			q.head = pos{first, 0}
		}
		q.cons.rd.cursor = q.head
	}
	q.rmu.Unlock()

	q.mu.Lock()
	q.liveEntries, q.liveBytes = res.liveEntries, res.liveBytes
	q.failed = nil
	bound := q.maxBytes
	q.mu.Unlock()
	q.setDepth(res.liveEntries, res.liveBytes, bound)
	q.m.degraded.Set(0)
	q.log.Debug("queue: open", "dir", q.dir, "segments", fmt.Sprintf("%d..%d", first, last), "entries", res.liveEntries, "bytes", res.liveBytes, "next_seq", next)
	return nil
}

// Append stores entries as consecutive entries of the queue and returns the
// sequence number of the first, once they are durable (Options.Sync). All
// entries of one call land in one record: all are stored or none. The
// entries must not be modified until Append returns. If ctx ends first,
// Append returns its error and the entries may or may not be stored.
func (q *Queue) Append(ctx context.Context, entries ...[]byte) (uint64, error) {
	p, err := q.Begin(entries...)
	if err != nil {
		return 0, err
	}
	return p.Wait(ctx)
}

// Pending is an append that has its place in the queue (Begin) and is not
// yet known durable (Wait).
type Pending struct {
	q     *Queue
	g     *group
	idx   int
	start time.Time
}

// Begin is the first half of Append: it admits entries (or refuses them:
// ErrTooLarge, ErrFull, ErrClosed, a storage error) and gives them their
// place, after every append begun before it returned and before every one
// begun after, without waiting for the commit. A caller that must keep an
// order between appends made from several goroutines (one sender's
// batches, in the order they arrived) begins them in that order (a Turn
// each) and waits for each on its own: they still share group commits. The entries must
// not be modified until Wait returns; Wait must be called.
func (q *Queue) Begin(entries ...[]byte) (Pending, error) {
	if len(entries) == 0 {
		return Pending{}, errors.New("queue: append of no entries")
	}
	size := 0
	for _, e := range entries {
		size += framedLen(len(e))
	}
	if size+trailerLen > q.opts.MaxRecordBytes {
		q.m.rejected.WithLabelValues("too_large").Inc()
		return Pending{}, fmt.Errorf("%w: %d bytes, max %d", ErrTooLarge, size, q.opts.MaxRecordBytes-trailerLen)
	}
	start := time.Now()
	q.mu.Lock()
	if err := q.admitLocked(int64(len(entries)), int64(size)); err != nil {
		q.mu.Unlock()
		return Pending{}, err
	}
	g := q.pending
	if g == nil || g.bytes+size+trailerLen > q.opts.MaxRecordBytes {
		if g != nil {
			q.sealed = append(q.sealed, g)
		}
		g = &group{done: make(chan struct{})}
		q.pending = g
	}
	idx := len(g.entries)
	g.entries = append(g.entries, entries...)
	g.bytes += size
	q.pendEntries += int64(len(entries))
	q.pendBytes += int64(size)
	q.mu.Unlock()

	select {
	case q.kick <- struct{}{}:
	default:
	}
	return Pending{q: q, g: g, idx: idx, start: start}, nil
}

// Wait is the second half of Append: it returns the sequence number of the
// first entry begun, once they are durable, or the commit's error. If ctx
// ends first, it returns ctx's error and the entries may or may not be
// stored.
func (p Pending) Wait(ctx context.Context) (uint64, error) {
	select {
	case <-p.g.done:
	case <-ctx.Done():
		return 0, fmt.Errorf("queue append abandoned (may still be stored): %w", ctx.Err())
	}
	if p.g.err != nil {
		p.q.m.rejected.WithLabelValues("storage").Inc()
		return 0, p.g.err
	}
	p.q.m.appendSeconds.Observe(time.Since(p.start).Seconds())
	return p.g.firstSeq + uint64(p.idx), nil
}

func (q *Queue) admitLocked(n, size int64) error {
	switch {
	case q.closed:
		q.m.rejected.WithLabelValues("closed").Inc()
		return ErrClosed
	case q.failed != nil:
		q.m.rejected.WithLabelValues("storage").Inc()
		return q.failed
	case q.maxBytes > 0 && q.liveBytes+q.pendBytes+size > q.maxBytes:
		q.m.rejected.WithLabelValues("full").Inc()
		return fmt.Errorf("%w: %d of %d bytes held", ErrFull, q.liveBytes+q.pendBytes, q.maxBytes)
	case q.opts.MaxEntries > 0 && q.liveEntries+q.pendEntries+n > q.opts.MaxEntries:
		q.m.rejected.WithLabelValues("full").Inc()
		return fmt.Errorf("%w: %d of %d entries held", ErrFull, q.liveEntries+q.pendEntries, q.opts.MaxEntries)
	}
	return nil
}

// Depth returns the entries and entry bytes held: appended and not removed.
func (q *Queue) Depth() (entries, bytes int64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.liveEntries, q.liveBytes
}

// Close stops the queue: appends already accepted are committed, further
// calls fail with ErrClosed, and acked records are removed. What was not
// acked stays on disk for the next Open. Close is safe to call twice.
func (q *Queue) Close() error {
	q.closeOnce.Do(func() {
		q.mu.Lock()
		q.closed = true
		q.mu.Unlock()
		q.leaveVolume()
		close(q.stop)
		<-q.committerDone
		<-q.removerDone
		q.rmu.Lock()
		q.rclosed = true
		close(q.avail)
		q.avail = make(chan struct{})
		q.cons.rd.close()
		for _, c := range q.cursors {
			c.cons.rd.close()
		}
		q.rmu.Unlock()
		var errs []error
		q.dqMu.Lock()
		if q.dq != nil {
			if q.opts.Sync == SyncAlways {
				if err := q.dq.TurboSync(); err != nil {
					errs = append(errs, fmt.Errorf("sync on close: %w", err))
				}
			}
			if err := q.dq.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close dque: %w", err))
			}
			q.dq = nil
		}
		q.dqMu.Unlock()
		if q.tailF != nil {
			q.tailF.Close()
		}
		if err := q.lockF.Close(); err != nil {
			errs = append(errs, fmt.Errorf("release lock: %w", err))
		}
		q.closeErr = errors.Join(errs...)
	})
	return q.closeErr
}

func lockDir(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open queue lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s", ErrLocked, path)
		}
		return nil, fmt.Errorf("lock queue: %w", err)
	}
	return f, nil
}

// newQueueBase returns the first sequence number of a new queue: a random
// multiple of 2^20 between 2^20 and 2^62.
func newQueueBase() uint64 {
	return (1 + rand.Uint64N(1<<42-1)) << 20
}

func readSeqFile(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read sequence file: %w", err)
	}
	if len(b) != 12 || crc32.Checksum(b[:8], castagnoli) != binary.LittleEndian.Uint32(b[8:]) {
		return 0, fmt.Errorf("sequence file %s damaged", path)
	}
	return binary.LittleEndian.Uint64(b), nil
}

func writeSeqFile(path string, v uint64) error {
	b := binary.LittleEndian.AppendUint64(nil, v)
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
	return replaceFile(path, b)
}
