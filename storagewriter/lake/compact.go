package lake

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/parquet-go/parquet-go"

	"github.com/drover-telemetry/drover/internal/atomicfile"
)

// compactRowGroupRows is the row group size of compacted files: 256 Ki rows,
// a few MiB compressed, ~30 MiB of buffers while one is being encoded.
const compactRowGroupRows = 1 << 18

// journalDir is the lake-relative folder (in Dir, local even when the lake
// is in Azure) of compaction journals, one sub-folder per writer.
const journalDir = "_journal"

// Failpoints of compaction, in order.
const (
	fpJournaled = "compact-journaled" // journal durable, no output published
	// fpBeforeRemove (dest.go): every output published, inputs still there.
)

// journal is the record of one compaction, written durably before its first
// output is published and removed after its last input is: a crash in
// between leaves it behind, and the next pass finishes the compaction (all
// outputs published: remove the inputs) or undoes it (remove the outputs
// that made it), so the lake never holds a row both in a merged file and in
// its inputs for longer than a pass.
type journal struct {
	Partition string   `json:"partition"`
	Inputs    []string `json:"inputs"`
	Outputs   []string `json:"outputs"`
}

// Compact runs one compaction pass now: it finishes or undoes compactions a
// crash interrupted, then merges the small files of every partition this
// sink has written to (the whole lake, on the first pass after start). The
// background loop calls it every CompactInterval; tests and tools may call it
// directly. Passes do not overlap.
func (s *Sink) Compact(ctx context.Context) error {
	return s.compact(ctx, s.now())
}

func (s *Sink) compact(ctx context.Context, now time.Time) error {
	s.compactMu.Lock()
	defer s.compactMu.Unlock()
	if err := s.recoverJournals(ctx); err != nil {
		return err
	}
	if !s.scanned {
		// Once per process: find the partitions that a previous run left
		// with work to do, from one listing of the whole lake, rather than
		// listing every partition of every past hour one by one.
		files, err := s.dest.list(ctx, "")
		if err != nil {
			return fmt.Errorf("lake: compact: %w", err)
		}
		small := make(map[partition]int)
		for _, f := range files {
			if p, ok := ownFile(f.name, s.cfg.Name); ok && f.size < s.cfg.TargetFileSize {
				small[p]++
			}
		}
		for p, n := range small {
			if n >= 2 || now.Before(p.end().Add(s.cfg.CompactGrace)) {
				s.markDirty(p)
			}
		}
		s.scanned = true
	}

	s.dirtyMu.Lock()
	type todo struct {
		p   partition
		gen uint64
	}
	parts := make([]todo, 0, len(s.dirty))
	for p, gen := range s.dirty {
		parts = append(parts, todo{p, gen})
	}
	s.dirtyMu.Unlock()
	slices.SortFunc(parts, func(a, b todo) int { return cmp.Compare(a.p.hour, b.p.hour) })

	var errs []error
	for _, t := range parts {
		if err := ctx.Err(); err != nil {
			return err
		}
		finished, err := s.compactPartition(ctx, t.p, now)
		if err != nil {
			s.m.compactErrors.Inc()
			errs = append(errs, fmt.Errorf("lake: compact %s: %w", t.p, err))
			continue
		}
		if finished {
			s.dirtyMu.Lock()
			if s.dirty[t.p] == t.gen { // nothing written into it since
				delete(s.dirty, t.p)
			}
			s.m.openPartitions.Set(float64(len(s.dirty)))
			s.dirtyMu.Unlock()
		}
	}
	return errors.Join(errs...)
}

// compactPartition merges the small files of p if there are enough of them,
// and reports whether p is finished: closed (past its hour and the grace),
// with at most one file below the target size.
//
// The rules bound the number of files and the rewriting (docs/lake.md has
// the numbers):
//   - while p is open, the newest files are merged once CompactMinFiles of
//     them (32 by default) can go together (see pickOpen): a merged file is
//     merged again only with about as much new data as it holds, so file
//     sizes double from merge to merge and a row is rewritten a
//     logarithmic number of times, not once per merge (merging everything
//     small each time would rewrite a slow hour's data ~30 times);
//   - once p is closed, all its files below TargetFileSize are merged into
//     files of TargetFileSize (the last one smaller). Merged files are
//     rolled only after reaching the target, so a second pass finds at most
//     one file below it and does nothing: compaction of a closed hour is
//     idempotent.
func (s *Sink) compactPartition(ctx context.Context, p partition, now time.Time) (finished bool, err error) {
	files, err := s.dest.list(ctx, p.dir())
	if err != nil {
		return false, err
	}
	var small []fileInfo
	for _, f := range files {
		if fp, ok := ownFile(f.name, s.cfg.Name); ok && fp == p && f.size < s.cfg.TargetFileSize {
			small = append(small, f)
		}
	}
	slices.SortFunc(small, func(a, b fileInfo) int { return cmp.Compare(a.name, b.name) }) // oldest first
	closed := !now.Before(p.end().Add(s.cfg.CompactGrace))
	var inputs []fileInfo
	if closed {
		if len(small) >= 2 {
			inputs = small
		}
	} else {
		inputs = pickOpen(small, s.cfg.CompactMinFiles)
	}
	if len(inputs) == 0 {
		return closed, nil
	}
	start := time.Now()
	outputs, err := s.mergeFiles(ctx, p, inputs)
	if err != nil {
		return false, err
	}
	s.m.compactions.Inc()
	s.m.compactSeconds.Observe(time.Since(start).Seconds())
	var inBytes, outBytes int64
	for _, f := range inputs {
		inBytes += f.size
	}
	for _, o := range outputs {
		outBytes += o.size
	}
	s.logger.Info("lake: compacted", "partition", p.String(), "closed", closed,
		"files_in", len(inputs), "bytes_in", inBytes, "files_out", len(outputs), "bytes_out", outBytes,
		"duration", time.Since(start).Round(time.Millisecond))
	return closed, nil
}

// pickOpen chooses what to merge in an open partition, from its files below
// the target size sorted oldest first: walking back from the newest, a file
// joins while it is at most 1.25 times the size of the newer files taken so
// far (the slack absorbs batches of slightly different sizes). The choice
// is made only if it holds at least minFiles files; else nothing is merged.
func pickOpen(small []fileInfo, minFiles int) []fileInfo {
	var taken int64
	i := len(small)
	for i > 0 && (taken == 0 || small[i-1].size <= taken+taken/4) {
		i--
		taken += small[i].size
	}
	if len(small)-i < minFiles {
		return nil
	}
	return small[i:]
}

// mergeFiles copies the rows of inputs, in order, into files of at most
// about TargetFileSize, publishes them under the protection of a journal,
// then removes the inputs.
func (s *Sink) mergeFiles(ctx context.Context, p partition, inputs []fileInfo) (outputs []*builder, err error) {
	defer func() {
		for _, b := range outputs {
			b.abort() // removes what was built and not published
		}
	}()
	var (
		cur     *builder
		inGroup int64
		rowsIn  int64
		rowsOut int64
		buf     = make([]parquet.Row, 1024)
	)
	for _, in := range inputs {
		if err := ctx.Err(); err != nil {
			return outputs, err
		}
		n, err := s.copyRows(ctx, in, buf, func(rows []parquet.Row) error {
			if cur == nil {
				b, err := s.newBuilder()
				if err != nil {
					return err
				}
				cur = b
				outputs = append(outputs, cur)
			}
			if err := cur.writeRows(rows); err != nil {
				return err
			}
			rowsOut += int64(len(rows))
			if inGroup += int64(len(rows)); inGroup >= s.rowGroupRows {
				inGroup = 0
				size, err := cur.flush()
				if err != nil {
					return err
				}
				if size >= s.cfg.TargetFileSize {
					if err := cur.finish(); err != nil {
						return err
					}
					cur = nil
				}
			}
			return nil
		})
		if err != nil {
			return outputs, fmt.Errorf("merge %s: %w", in.name, err)
		}
		rowsIn += n
	}
	if cur != nil {
		if err := cur.finish(); err != nil {
			return outputs, err
		}
	}
	if rowsIn != rowsOut {
		return outputs, fmt.Errorf("merged %d rows out of %d read", rowsOut, rowsIn)
	}

	j := journal{Partition: p.dir()}
	for _, in := range inputs {
		j.Inputs = append(j.Inputs, in.name)
	}
	for range outputs {
		j.Outputs = append(j.Outputs, s.names.next(p))
	}
	jpath, err := s.writeJournal(j)
	if err != nil {
		return outputs, err
	}
	s.fire(fpJournaled)
	for i, b := range outputs {
		if err := s.dest.commit(ctx, b.path, j.Outputs[i]); err != nil {
			// The journal stays: the next pass undoes what was published.
			return outputs, fmt.Errorf("publish %s: %w", j.Outputs[i], err)
		}
		b.published()
		s.m.files.WithLabelValues(kindCompacted).Inc()
		s.m.bytes.WithLabelValues(kindCompacted).Add(float64(b.size))
	}
	s.fire(fpBeforeRemove)
	if err := s.dest.remove(ctx, j.Inputs); err != nil {
		return outputs, err // the next pass finishes the removal
	}
	s.m.filesRemoved.Add(float64(len(j.Inputs)))
	if err := s.removeJournal(jpath); err != nil {
		return outputs, err
	}
	return outputs, nil
}

// copyRows reads every row of the data file in, in chunks of len(buf), and
// hands them to emit, in the current schema (a file of an older schema
// version gets nulls in the columns added since). Rows stay in Parquet's
// generic form, never decoded into Row: copying values is several times
// cheaper. It returns the number of rows read.
func (s *Sink) copyRows(ctx context.Context, in fileInfo, buf []parquet.Row, emit func([]parquet.Row) error) (int64, error) {
	r, size, err := s.dest.open(ctx, in.name)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	pf, err := parquet.OpenFile(r, size)
	if err != nil {
		return 0, fmt.Errorf("open parquet: %w", err)
	}
	rd := parquet.NewGenericReader[Row](pf)
	defer rd.Close()
	var total int64
	for {
		n, err := rd.ReadRows(buf)
		if n > 0 {
			if err := emit(buf[:n]); err != nil {
				return total, err
			}
			total += int64(n)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return total, fmt.Errorf("read rows: %w", err)
		}
	}
	if want := pf.NumRows(); total != want {
		return total, fmt.Errorf("read %d rows, the footer says %d", total, want)
	}
	return total, nil
}

func (s *Sink) fire(point string) {
	if s.hook != nil {
		s.hook(point)
	}
}

// journalFolder is where this writer's journals live.
func (s *Sink) journalFolder() string {
	return filepath.Join(s.cfg.Dir, journalDir, s.cfg.Name)
}

// writeJournal stores j durably (temp file, fsync, rename, folder fsync)
// and returns its path.
func (s *Sink) writeJournal(j journal) (string, error) {
	dir := s.journalFolder()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create journal folder: %w", err)
	}
	data, err := json.Marshal(j)
	if err != nil {
		return "", fmt.Errorf("encode journal: %w", err)
	}
	final := filepath.Join(dir, fmt.Sprintf("%019d.json", time.Now().UnixNano()))
	// A crash before the rename leaves a ".NAME.*.tmp" file, which
	// recoverJournals removes.
	if err := atomicfile.WriteFile(final, data, 0o644); err != nil {
		return "", fmt.Errorf("write journal: %w", err)
	}
	return final, nil
}

func (s *Sink) removeJournal(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove journal: %w", err)
	}
	return syncDir(filepath.Dir(path))
}

// recoverJournals finishes or undoes the compactions that a crash or an
// error interrupted: if every output was published the inputs go, else the
// outputs that were published go. Either way each row is then in the lake
// once, as before.
func (s *Sink) recoverJournals(ctx context.Context) error {
	dir := s.journalFolder()
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("lake: read journals: %w", err)
	}
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		if strings.HasSuffix(e.Name(), ".tmp") {
			os.Remove(path) // never renamed: its compaction published nothing
			continue
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("lake: read journal: %w", err)
		}
		var j journal
		if err := json.Unmarshal(data, &j); err != nil {
			return fmt.Errorf("lake: journal %s: %w", path, err)
		}
		p, ok := parsePartition(j.Partition)
		if !ok {
			return fmt.Errorf("lake: journal %s: bad partition %q", path, j.Partition)
		}
		files, err := s.dest.list(ctx, j.Partition)
		if err != nil {
			return fmt.Errorf("lake: recover compaction: %w", err)
		}
		present := make(map[string]bool, len(files))
		for _, f := range files {
			present[f.name] = true
		}
		var published []string
		for _, o := range j.Outputs {
			if present[o] {
				published = append(published, o)
			}
		}
		if len(published) == len(j.Outputs) {
			err = s.dest.remove(ctx, j.Inputs)
			s.logger.Info("lake: finished an interrupted compaction", "partition", j.Partition, "inputs_removed", len(j.Inputs))
		} else {
			err = s.dest.remove(ctx, published)
			s.logger.Info("lake: undid an interrupted compaction", "partition", j.Partition, "outputs_removed", len(published))
		}
		if err != nil {
			return fmt.Errorf("lake: recover compaction: %w", err)
		}
		if err := s.removeJournal(path); err != nil {
			return fmt.Errorf("lake: %w", err)
		}
		s.markDirty(p)
	}
	return nil
}

// compactLoop runs a compaction pass every CompactInterval until ctx ends.
func (s *Sink) compactLoop(ctx context.Context) {
	defer close(s.done)
	t := time.NewTicker(s.cfg.CompactInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := s.Compact(ctx); err != nil && ctx.Err() == nil {
			s.logger.Warn("lake: compaction failed; retrying at the next pass", "err", err)
		}
	}
}
