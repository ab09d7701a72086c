package storagewriter

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/drover-telemetry/drover/internal/atomicfile"
	"github.com/drover-telemetry/drover/storagewriter/sink"
	"github.com/drover-telemetry/drover/telemetry"
)

// DefaultReplayRetryFor is the default of ReplayOptions.RetryFor.
const DefaultReplayRetryFor = time.Minute

// ReplayOptions says what [Replay] replays and how.
type ReplayOptions struct {
	// Files are the dead-letter files to replay. Empty: every dead-letter
	// file of the writer (Config.SubscriberName) in its dead-letter folder,
	// oldest first.
	Files []string
	// Keep leaves each replayed file in place; by default a file whose
	// every line is now in the sink or in a new dead-letter file is
	// removed.
	Keep bool
	// RetryFor is how long a transient sink failure (InfluxDB down) is
	// retried before the replay gives up; 0 means DefaultReplayRetryFor.
	RetryFor time.Duration
}

// ReplayReport says what [Replay] did with each file.
type ReplayReport struct {
	Files []ReplayedFile
	// NewFiles are the dead-letter files the replay wrote: the records the
	// sink refused again, and the lines it could not replay.
	NewFiles []string
}

// ReplayedFile is what became of one dead-letter file.
type ReplayedFile struct {
	Path string
	// Records is the records the file holds; Written of them are now in
	// the sink, RefusedAgain were refused for good again (and are in a new
	// dead-letter file with the new reason).
	Records, Written, RefusedAgain int
	// CarriedOver counts the lines copied as they were to a new
	// dead-letter file: undecodable queue entries (entry_base64) and lines
	// that are not a dead letter at all. They need a human.
	CarriedOver int
	// Torn counts a last line cut short by a crash while it was written:
	// its record stayed queued and was dead-lettered again, so it is
	// dropped.
	Torn int
	// Removed says the file was removed once replayed (not with Keep).
	Removed bool
	// Skipped, when not empty, says why the file was not replayed at all.
	Skipped string
	// Err is why the replay of this file stopped; the file stays.
	Err error
}

// Done reports whether every record of every file is now in the sink:
// nothing skipped, failed, refused again or carried over.
func (r ReplayReport) Done() bool {
	for _, f := range r.Files {
		if f.Skipped != "" || f.Err != nil || f.RefusedAgain > 0 || f.CarriedOver > 0 {
			return false
		}
	}
	return true
}

// Replay writes the records of dead-letter files to the writer's sink
// (built from cfg as the writer builds it), once the cause of their refusal
// is fixed: a field type changed in InfluxDB, a schema migrated, a bug
// fixed. The sinks are idempotent, so replaying a record twice, or a file
// that was partly replayed, is harmless.
//
// It isolates what the sink still refuses as the writer does (bisection)
// and writes it, with the new reason, to a new dead-letter file; lines
// without a record are copied there as they are. Then, unless opts.Keep, it
// removes the file: every line is in the sink or in the new file. A
// transient failure that outlasts opts.RetryFor stops the replay; the files
// not done stay, and the error is returned with the report.
//
// It can run while the writer runs: the writer holds a lock on the file it
// appends to, which Replay then skips (the writer starts a new file at its
// next start, or after -dead-letter-file-age or -dead-letter-file-bytes).
// With the lake sink, the replay's files carry the name NAME-replay, so
// that the replay's sink and the writer's never touch each other's files
// being built; the writer does not compact them.
func Replay(ctx context.Context, cfg Config, opts ReplayOptions, logger *slog.Logger) (ReplayReport, error) {
	var rep ReplayReport
	// The replay's own dead letters are never pruned: they may be the only
	// copy of what it reads.
	cfg.DeadLetterMaxBytes, cfg.DeadLetterMaxAge = 0, 0
	w, err := New(cfg, logger, nil)
	if err != nil {
		return rep, err
	}
	w.retryFor = opts.RetryFor
	if w.retryFor <= 0 {
		w.retryFor = DefaultReplayRetryFor
	}
	w.dl.quiet = true
	w.cfg.Lake.Name = w.cfg.Name + "-replay"
	w.cfg.Lake.CompactInterval = 0
	if w.cfg.Sink == SinkLake {
		if err := w.cfg.Lake.Validate(); err != nil {
			return rep, fmt.Errorf("replay: %w", err)
		}
	}
	files := opts.Files
	if len(files) == 0 {
		found, err := listDeadLetters(w.cfg.deadLetterDir(), w.cfg.Name)
		if err != nil {
			return rep, fmt.Errorf("replay: %w", err)
		}
		for _, f := range found {
			files = append(files, f.path)
		}
	}
	if len(files) == 0 {
		return rep, nil
	}
	if err := w.dl.open(); err != nil {
		return rep, fmt.Errorf("replay: %w", err)
	}
	defer func() {
		if err := w.dl.close(); err != nil {
			w.logger.Error("replay: close dead-letter file", "err", err)
		}
	}()
	s, err := w.openSink()
	if err != nil {
		return rep, fmt.Errorf("replay: open sink %s: %w", w.cfg.Sink, err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
		defer cancel()
		if err := s.Close(cctx); err != nil {
			w.logger.Error("replay: close sink", "err", err)
		}
	}()
	var stop error
	for _, path := range files {
		if stop != nil {
			rep.Files = append(rep.Files, ReplayedFile{Path: path, Skipped: "not reached: the replay stopped"})
			continue
		}
		rf := w.replayFile(ctx, s, path, opts.Keep)
		rep.Files = append(rep.Files, rf)
		if rf.Err != nil && !errors.Is(rf.Err, errReadFile) {
			stop = rf.Err // the sink, or ctx: the next files would fail the same way
		}
	}
	rep.NewFiles = w.dl.createdFiles()
	return rep, stop
}

// errReadFile marks a failure to read one file, which does not stop the
// replay of the others.
var errReadFile = errors.New("read dead-letter file")

// replayFile replays one file.
func (w *Writer) replayFile(ctx context.Context, s sink.Sink, path string, keep bool) ReplayedFile {
	rf := ReplayedFile{Path: path}
	f, err := os.Open(path)
	if err != nil {
		rf.Err = fmt.Errorf("%w: %w", errReadFile, err)
		return rf
	}
	defer f.Close()
	if err := lockFile(f); err != nil {
		if errors.Is(err, errFileInUse) {
			rf.Skipped = err.Error()
		} else {
			rf.Err = fmt.Errorf("%w: %w", errReadFile, err)
		}
		return rf
	}
	var (
		recs    []*telemetry.EnrichedRecord
		routers []string
		carry   []byte
	)
	flush := func() error {
		if len(recs) == 0 {
			return nil
		}
		before := w.dlRecords.Load()
		if err := w.writeIsolating(ctx, ctx, s, recs, routers, true); err != nil {
			return err
		}
		refused := int(w.dlRecords.Load() - before)
		rf.RefusedAgain += refused
		rf.Written += len(recs) - refused
		recs, routers = recs[:0], routers[:0]
		return nil
	}
	rd := bufio.NewReaderSize(f, 256<<10)
	for {
		line, err := rd.ReadBytes('\n')
		if errors.Is(err, io.EOF) {
			if len(bytes.TrimSpace(line)) > 0 {
				rf.Torn++ // no newline: a write cut short by a crash
			}
			break
		}
		if err != nil {
			rf.Err = fmt.Errorf("%w %s: %w", errReadFile, path, err)
			return rf
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		rec, router := decodeDeadLetter(line)
		if rec == nil {
			carry = append(carry, line...)
			rf.CarriedOver++
			continue
		}
		rf.Records++
		recs, routers = append(recs, rec), append(routers, router)
		if len(recs) >= w.cfg.BatchRecords {
			if err := flush(); err != nil {
				rf.Err = err
				return rf
			}
		}
	}
	if err := flush(); err != nil {
		rf.Err = err
		return rf
	}
	if len(carry) > 0 {
		if err := w.dl.writeRaw(carry); err != nil {
			rf.Err = err
			return rf
		}
	}
	if keep {
		return rf
	}
	if err := os.Remove(path); err != nil {
		rf.Err = fmt.Errorf("remove the replayed file: %w", err)
		return rf
	}
	if err := atomicfile.SyncDir(filepath.Dir(path)); err != nil {
		w.logger.Warn("replay: fsync dead-letter folder", "err", err)
	}
	rf.Removed = true
	return rf
}

// decodeDeadLetter returns the record of a dead-letter line and its router,
// or nil when the line holds none (an undecodable entry, or not a dead
// letter at all).
func decodeDeadLetter(line []byte) (*telemetry.EnrichedRecord, string) {
	var dl DeadLetter
	if err := json.Unmarshal(line, &dl); err != nil || len(dl.Record) == 0 {
		return nil, ""
	}
	rec := new(telemetry.EnrichedRecord)
	if err := protojson.Unmarshal(dl.Record, rec); err != nil {
		return nil, ""
	}
	return rec, dl.Router
}
