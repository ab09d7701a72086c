package lake

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/compress"
	"github.com/parquet-go/parquet-go/compress/snappy"
	"github.com/parquet-go/parquet-go/compress/zstd"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/storagewriter/sink"
	"github.com/drover-telemetry/drover/telemetry"
)

// ErrClosed is what Write returns after Close.
var ErrClosed = errors.New("lake: sink closed")

// Sink writes enriched records to the lake as Parquet files. It implements
// [sink.Sink]; see the package documentation for the durability contract.
// Its methods are safe for concurrent use.
type Sink struct {
	cfg     Config
	logger  *slog.Logger
	m       *metrics
	dest    destination
	scratch string // local folder of files being built
	names   namer
	opts    []parquet.WriterOption
	now     func() time.Time
	hook    hookFunc // failpoints; nil outside tests

	rowGroupRows int64 // rows per row group of compacted files

	// Parquet writers and their write buffers, reused from file to file:
	// a new writer allocates its page buffers anew (~1 MiB).
	writers sync.Pool // *parquet.GenericWriter[Row]
	buffers sync.Pool // *bufio.Writer

	// dirty holds the partitions that may need compaction, with a
	// generation that Write bumps, so that a pass that finished a partition
	// does not forget a file written into it meanwhile.
	dirtyMu sync.Mutex
	dirty   map[partition]uint64
	gen     uint64

	compactMu sync.Mutex // one compaction pass at a time
	scanned   bool       // whether a pass has listed the whole lake once

	closed    atomic.Bool
	closeOnce sync.Once
	stop      context.CancelFunc
	done      chan struct{} // closed when the compaction loop has ended
}

var _ sink.Sink = (*Sink)(nil)

// New checks cfg and returns a sink that logs to logger and registers its
// metrics with reg (nil: a discarding logger, unregistered metrics). It
// creates the local folders, removes what a crash left being built, and
// starts the compaction loop if cfg.CompactInterval > 0. It does not contact
// Azure: a lake that is down makes Write fail (and the writer's queue grow),
// not New.
func New(cfg Config, logger *slog.Logger, reg prometheus.Registerer) (*Sink, error) {
	return newSink(cfg, logger, reg, nil, time.Now)
}

func newSink(cfg Config, logger *slog.Logger, reg prometheus.Registerer, hook hookFunc, now func() time.Time) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Sink{
		cfg:     cfg,
		logger:  logger,
		m:       newMetrics(),
		scratch: scratchName(cfg.Dir, cfg.Name),
		names:   namer{writer: cfg.Name, now: time.Now}, // names follow the wall clock, whatever now says
		now:     now,
		hook:    hook,
		dirty:   make(map[partition]uint64),
		done:    make(chan struct{}),

		rowGroupRows: compactRowGroupRows,
	}
	var codec compress.Codec = &zstd.Codec{Level: zstd.SpeedDefault}
	if cfg.Compression == CompressionSnappy {
		codec = &snappy.Codec{}
	}
	s.opts = []parquet.WriterOption{
		parquet.Compression(codec),
		parquet.KeyValueMetadata("drover.schema", SchemaVersion),
		parquet.KeyValueMetadata("drover.writer", cfg.Name),
	}
	s.writers.New = func() any { return parquet.NewGenericWriter[Row](io.Discard, s.opts...) }
	s.buffers.New = func() any { return bufio.NewWriterSize(io.Discard, 256<<10) }

	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("lake: create folder: %w", err)
	}
	if err := s.cleanScratch(); err != nil {
		return nil, fmt.Errorf("lake: %w", err)
	}
	dest, err := openDest(cfg, s.scratch, hook)
	if err != nil {
		return nil, err
	}
	s.dest = dest
	s.logger = logger.With("lake", s.dest.String())
	if err := s.m.register(reg); err != nil {
		return nil, fmt.Errorf("lake: %w", err)
	}
	s.logger.Info("lake: open", "writer", cfg.Name, "compression", cfg.Compression,
		"target_file_size", formatSize(cfg.TargetFileSize), "compact_interval", cfg.CompactInterval)

	ctx, stop := context.WithCancel(context.Background())
	s.stop = stop
	if cfg.CompactInterval > 0 {
		go s.compactLoop(ctx)
	} else {
		close(s.done)
	}
	return s, nil
}

// cleanScratch creates the scratch folder, or empties it of what a crash
// left: files being built are never visible in the lake, so they are simply
// dropped (their records are still in the writer's queue).
func (s *Sink) cleanScratch() error {
	if err := os.MkdirAll(s.scratch, 0o755); err != nil {
		return fmt.Errorf("create scratch folder: %w", err)
	}
	entries, err := os.ReadDir(s.scratch)
	if err != nil {
		return fmt.Errorf("read scratch folder: %w", err)
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(s.scratch, e.Name())); err != nil {
			return fmt.Errorf("remove leftover: %w", err)
		}
		s.m.tempFilesRemoved.Inc()
	}
	if len(entries) > 0 {
		s.logger.Info("lake: removed files a crash left being built", "folder", s.scratch, "files", len(entries))
	}
	return nil
}

// Name returns "lake".
func (s *Sink) Name() string { return "lake" }

// Write stores recs in the lake: one Parquet file per hour partition the
// records fall in, each published whole (see the package documentation).
// It returns nil only when every file is durable: fsynced and renamed into
// its folder, or committed to Azure. A record that cannot be converted
// makes the whole call fail with a [sink.Permanent] error, writing nothing;
// any other error is transient, and a retry writes the records again under
// new file names (rows that are already there become duplicates, which
// queries drop by (device_id, seq)).
func (s *Sink) Write(ctx context.Context, recs []*telemetry.EnrichedRecord) error {
	if s.closed.Load() {
		return ErrClosed
	}
	if len(recs) == 0 {
		return nil
	}
	start := time.Now()
	groups, err := rowsByPartition(recs)
	if err != nil {
		s.m.writeErrors.WithLabelValues("permanent").Inc()
		return sink.Permanent(fmt.Errorf("lake: %w", err))
	}
	s.m.pendingRows.Add(float64(len(recs)))
	defer s.m.pendingRows.Sub(float64(len(recs)))

	parts := make([]partition, 0, len(groups))
	for p := range groups {
		parts = append(parts, p)
	}
	slices.SortFunc(parts, func(a, b partition) int { return cmp.Compare(a.hour, b.hour) })
	for _, p := range parts {
		if err := ctx.Err(); err != nil {
			s.m.writeErrors.WithLabelValues("transient").Inc()
			return fmt.Errorf("lake: write: %w", err)
		}
		if err := s.writeFile(ctx, p, groups[p]); err != nil {
			s.m.writeErrors.WithLabelValues("transient").Inc()
			return fmt.Errorf("lake: write %s: %w", p, err)
		}
		s.markDirty(p)
	}
	s.m.rows.Add(float64(len(recs)))
	s.m.writeSeconds.Observe(time.Since(start).Seconds())
	return nil
}

// writeFile builds one file of rows, all in partition p, and publishes it.
func (s *Sink) writeFile(ctx context.Context, p partition, rows []Row) error {
	b, err := s.newBuilder()
	if err != nil {
		return err
	}
	if err := b.write(rows); err != nil {
		b.abort()
		return err
	}
	if err := b.finish(); err != nil {
		b.abort()
		return err
	}
	_, err = s.publish(ctx, b, p, kindBatch)
	return err
}

// publish hands a finished file to the destination under a new name in p,
// and returns that name. The built file is consumed whatever happens.
func (s *Sink) publish(ctx context.Context, b *builder, p partition, kind string) (string, error) {
	for attempt := 1; ; attempt++ {
		name := s.names.next(p)
		err := s.dest.commit(ctx, b.path, name)
		if errors.Is(err, errExists) && attempt < 3 {
			s.logger.Warn("lake: file name taken, publishing under another", "name", name)
			continue
		}
		if err != nil {
			b.abort()
			return "", fmt.Errorf("publish %s: %w", name, err)
		}
		b.published()
		s.m.files.WithLabelValues(kind).Inc()
		s.m.bytes.WithLabelValues(kind).Add(float64(b.size))
		return name, nil
	}
}

// markDirty notes that p has a new file, for compaction.
func (s *Sink) markDirty(p partition) {
	s.dirtyMu.Lock()
	s.gen++
	s.dirty[p] = s.gen
	s.m.openPartitions.Set(float64(len(s.dirty)))
	s.dirtyMu.Unlock()
}

// Close stops compaction (an unfinished merge is abandoned: its inputs stay
// in place) and waits for it until ctx ends. Write leaves nothing pending, so
// there is nothing to flush. Close is safe to call more than once.
func (s *Sink) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.stop()
	})
	select {
	case <-s.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("lake: close: compaction still running: %w", ctx.Err())
	}
}

// builder builds one Parquet file in the scratch folder.
type builder struct {
	s    *Sink
	path string
	f    *os.File
	bw   *bufio.Writer
	pw   *parquet.GenericWriter[Row]
	rows int64
	size int64 // the file's size, once finished
}

func (s *Sink) newBuilder() (*builder, error) {
	f, err := os.CreateTemp(s.scratch, "build-*.tmp")
	if err != nil {
		return nil, fmt.Errorf("create file: %w", err)
	}
	bw := s.buffers.Get().(*bufio.Writer)
	bw.Reset(f)
	pw := s.writers.Get().(*parquet.GenericWriter[Row])
	pw.Reset(bw)
	return &builder{s: s, path: f.Name(), f: f, bw: bw, pw: pw}, nil
}

// write adds rows to the file's current row group.
func (b *builder) write(rows []Row) error {
	if _, err := b.pw.Write(rows); err != nil {
		return fmt.Errorf("encode rows: %w", err)
	}
	b.rows += int64(len(rows))
	return nil
}

// writeRows adds rows in Parquet's generic form, as read from a file of
// the same schema: no conversion to and from Row.
func (b *builder) writeRows(rows []parquet.Row) error {
	if _, err := b.pw.WriteRows(rows); err != nil {
		return fmt.Errorf("encode rows: %w", err)
	}
	b.rows += int64(len(rows))
	return nil
}

// flush ends the current row group and returns the bytes written so far
// (exact: no row is buffered after a flush).
func (b *builder) flush() (int64, error) {
	if err := b.pw.Flush(); err != nil {
		return 0, fmt.Errorf("encode row group: %w", err)
	}
	return b.pw.Size(), nil
}

// finish writes the footer and closes the file. It does not fsync: the
// destination does, when the file is to stay on local disk.
func (b *builder) finish() error {
	if err := b.pw.Close(); err != nil {
		return fmt.Errorf("encode footer: %w", err)
	}
	if err := b.bw.Flush(); err != nil {
		return fmt.Errorf("write file: %w", err)
	}
	st, err := b.f.Stat()
	if err != nil {
		return fmt.Errorf("stat file: %w", err)
	}
	b.size = st.Size()
	if err := b.f.Close(); err != nil {
		return fmt.Errorf("close file: %w", err)
	}
	b.release()
	return nil
}

// release returns the writer and buffer to the pools, once.
func (b *builder) release() {
	if b.pw == nil {
		return
	}
	b.pw.Reset(io.Discard)
	b.bw.Reset(io.Discard)
	b.s.writers.Put(b.pw)
	b.s.buffers.Put(b.bw)
	b.pw, b.bw = nil, nil
}

// published notes that the destination took the file: its scratch path is
// no longer ours to remove (another file may get the name).
func (b *builder) published() { b.path = "" }

// abort drops the file, unless it was published. The writer is not reused:
// its state is unknown.
func (b *builder) abort() {
	b.pw, b.bw = nil, nil
	b.f.Close()
	if b.path != "" {
		os.Remove(b.path)
		b.path = ""
	}
}
