package router

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/drover-telemetry/drover/internal/atomicfile"
	"github.com/drover-telemetry/drover/internal/forward"
)

// dedup knows, per sender, which of its queue sequences the router has
// stored (durably) and which are being stored right now, so that a resent
// entry is stored once. Its stored sets survive restarts in a journal (see
// doc.go, "Recognising duplicates").
type dedup struct {
	mu      sync.Mutex
	max     int
	senders map[string]*senderState
	j       *journal
	m       *metrics
	log     *slog.Logger
}

type senderState struct {
	stored  *forward.SeqSet
	pending []*appendOp
}

// appendOp is the storing of some sequences of one sender, under way.
type appendOp struct {
	sender  string
	missing []forward.Interval
	done    chan struct{}
	err     error // set before done is closed
}

// plan is what a batch needs: the part nobody has stored or is storing
// (op, nil if none), and the appends under way it must wait for (deps).
type plan struct {
	op   *appendOp
	deps []*appendOp
	dups uint64 // entries stored already or being stored by another batch
}

func newDedup(max int, j *journal, m *metrics, logger *slog.Logger) *dedup {
	return &dedup{max: max, senders: map[string]*senderState{}, j: j, m: m, log: logger}
}

func (d *dedup) sender(name string) *senderState {
	st := d.senders[name]
	if st == nil {
		st = &senderState{stored: forward.NewSeqSet(d.max)}
		d.senders[name] = st
		d.m.dedupSenders.Set(float64(len(d.senders)))
	}
	return st
}

// load adds intervals known to be stored (at startup; no journal write).
func (d *dedup) load(sender string, ivs ...forward.Interval) {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.sender(sender)
	for _, iv := range ivs {
		d.m.dedupForgotten.Add(float64(st.stored.Add(iv.First, iv.Last)))
	}
}

// plan works out what to store of sender's first..last, and registers the
// new part as being stored: a batch arriving meanwhile with the same
// sequences waits for this one instead of storing them again. The caller
// must call finish(p.op, err) when p.op is not nil.
func (d *dedup) plan(sender string, first, last uint64) plan {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.sender(sender)
	var p plan
	missing := st.stored.Missing(first, last, nil)
	for _, op := range st.pending {
		if len(missing) == 0 {
			break
		}
		if rest := subtract(missing, op.missing); forward.TotalLen(rest) != forward.TotalLen(missing) {
			p.deps = append(p.deps, op)
			missing = rest
		}
	}
	p.dups = last - first + 1 - forward.TotalLen(missing)
	if len(missing) > 0 {
		p.op = &appendOp{sender: sender, missing: missing, done: make(chan struct{})}
		st.pending = append(st.pending, p.op)
	}
	return p
}

// stored records that ivs of sender are durable in the queue, in memory
// and in the journal.
func (d *dedup) stored(sender string, ivs []forward.Interval) {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.sender(sender)
	for _, iv := range ivs {
		d.m.dedupForgotten.Add(float64(st.stored.Add(iv.First, iv.Last)))
	}
	if d.j != nil {
		d.j.write(sender, ivs, d.snapshotLocked)
	}
}

// holds reports whether every sequence of sender's first..last is known
// stored.
func (d *dedup) holds(sender string, first, last uint64) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.sender(sender).stored.Contains(first, last)
}

// finish ends op: batches waiting for it go on, and see err.
func (d *dedup) finish(op *appendOp, err error) {
	d.mu.Lock()
	st := d.sender(op.sender)
	if i := slices.Index(st.pending, op); i >= 0 {
		st.pending = slices.Delete(st.pending, i, i+1)
	}
	d.mu.Unlock()
	op.err = err
	close(op.done)
}

// snapshotLocked returns every sender's stored intervals. d.mu is held.
func (d *dedup) snapshotLocked() map[string][]forward.Interval {
	out := make(map[string][]forward.Interval, len(d.senders))
	for name, st := range d.senders {
		if st.stored.Len() > 0 {
			out[name] = st.stored.Intervals()
		}
	}
	return out
}

// sync makes the journal durable, and rewrites it if writing it failed.
func (d *dedup) sync() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.j != nil {
		d.j.sync(d.snapshotLocked)
	}
}

// close writes a compact, durable journal and closes it.
func (d *dedup) close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.j == nil {
		return nil
	}
	err := d.j.close(d.snapshotLocked())
	d.j = nil
	return err
}

// subtract returns the parts of a not in b; both sorted and disjoint.
func subtract(a, b []forward.Interval) []forward.Interval {
	var out []forward.Interval
	j := 0
	for _, iv := range a {
		cur := iv.First
		for j < len(b) && b[j].Last < cur {
			j++
		}
		k := j
		done := false
		for ; k < len(b) && b[k].First <= iv.Last; k++ {
			if b[k].First > cur {
				out = append(out, forward.Interval{First: cur, Last: b[k].First - 1})
			}
			if b[k].Last >= iv.Last {
				done = true
				break
			}
			cur = b[k].Last + 1
		}
		if !done {
			out = append(out, forward.Interval{First: cur, Last: iv.Last})
		}
	}
	return out
}

// The journal: DIR/dedup.log holds what dedup knows is stored, so that a
// restarted router recognises resent entries, including those it has
// already delivered and removed from its queue.
//
//	file    = magic "drvdedup" | version uint32 LE (1) | record*
//	record  = length uint32 LE | body | CRC-32C(body) uint32 LE
//	body    = uvarint len(sender) | sender | uvarint first | uvarint last
//
// A record is written (write(2), no fsync) after the append it describes
// returned, so the journal never claims what the queue does not hold. It is
// fsynced every second and at close. At open, records are read up to the
// first damaged one (a torn tail after a crash); what is lost that way is
// only stored again if it is resent. The file is then rewritten compactly,
// one record per interval (temporary file, fsync, rename, fsync of the
// directory), and again whenever it has grown to many records.
const (
	journalName    = "dedup.log"
	journalMagic   = "drvdedup"
	journalVersion = 1
	journalHdrLen  = len(journalMagic) + 4
	// compactAfter is the journal records written before it is rewritten
	// (about 2 MiB); at most a few ms of work per that many batches.
	compactAfter = 64 << 10
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

type journal struct {
	path    string
	f       *os.File
	records int
	dirty   bool
	failed  error // non-nil after a write failed; a rewrite clears it
	buf     []byte
	log     *slog.Logger
	m       *metrics
}

// readJournal returns the intervals recorded in dir's journal, and whether
// the journal exists. Damage ends the reading, with a warning.
func readJournal(dir string, logger *slog.Logger) (map[string][]forward.Interval, bool, error) {
	path := filepath.Join(dir, journalName)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read dedup journal: %w", err)
	}
	out := map[string][]forward.Interval{}
	if len(data) < journalHdrLen || !bytes.Equal(data[:len(journalMagic)], []byte(journalMagic)) {
		logger.Warn("router: dedup journal has no valid header; ignoring it", "path", path, "bytes", len(data))
		return out, true, nil
	}
	if v := binary.LittleEndian.Uint32(data[len(journalMagic):]); v != journalVersion {
		return nil, true, fmt.Errorf("dedup journal %s: version %d, this router reads %d", path, v, journalVersion)
	}
	off := journalHdrLen
	n := 0
	for off < len(data) {
		sender, iv, size, err := parseJournalRecord(data[off:])
		if err != nil {
			logger.Warn("router: dedup journal cut at a damaged record (torn tail); entries it named may be stored again if resent",
				"path", path, "offset", off, "records", n, "err", err)
			break
		}
		out[sender] = append(out[sender], iv)
		off += size
		n++
	}
	return out, true, nil
}

func parseJournalRecord(b []byte) (string, forward.Interval, int, error) {
	var iv forward.Interval
	if len(b) < 8 {
		return "", iv, 0, io.ErrUnexpectedEOF
	}
	l := int(binary.LittleEndian.Uint32(b))
	if l > 1024 || len(b) < 8+l {
		return "", iv, 0, fmt.Errorf("record of %d bytes: %w", l, io.ErrUnexpectedEOF)
	}
	body := b[4 : 4+l]
	if crc32.Checksum(body, castagnoli) != binary.LittleEndian.Uint32(b[4+l:]) {
		return "", iv, 0, errors.New("checksum mismatch")
	}
	sl, n := binary.Uvarint(body)
	if n <= 0 || uint64(len(body)-n) < sl {
		return "", iv, 0, errors.New("bad sender length")
	}
	body = body[n:]
	sender := string(body[:sl])
	body = body[sl:]
	first, n := binary.Uvarint(body)
	if n <= 0 {
		return "", iv, 0, errors.New("bad first sequence")
	}
	last, m := binary.Uvarint(body[n:])
	if m <= 0 || n+m != len(body) || sender == "" || first == 0 || last < first {
		return "", iv, 0, errors.New("bad record body")
	}
	return sender, forward.Interval{First: first, Last: last}, 8 + l, nil
}

func appendJournalRecord(dst []byte, sender string, iv forward.Interval) []byte {
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0)
	dst = binary.AppendUvarint(dst, uint64(len(sender)))
	dst = append(dst, sender...)
	dst = binary.AppendUvarint(dst, iv.First)
	dst = binary.AppendUvarint(dst, iv.Last)
	body := dst[start+4:]
	binary.LittleEndian.PutUint32(dst[start:], uint32(len(body)))
	return binary.LittleEndian.AppendUint32(dst, crc32.Checksum(body, castagnoli))
}

// openJournal rewrites dir's journal from state and opens it for appending.
func openJournal(dir string, state map[string][]forward.Interval, m *metrics, logger *slog.Logger) (*journal, error) {
	j := &journal{path: filepath.Join(dir, journalName), log: logger, m: m}
	if err := j.rewrite(state); err != nil {
		return nil, err
	}
	return j, nil
}

// rewrite replaces the journal with one record per interval of state,
// durably, and reopens it for appending.
func (j *journal) rewrite(state map[string][]forward.Interval) error {
	start := time.Now()
	b := append([]byte(journalMagic), 0, 0, 0, 0)
	binary.LittleEndian.PutUint32(b[len(journalMagic):], journalVersion)
	n := 0
	for _, sender := range slices.Sorted(maps.Keys(state)) {
		for _, iv := range state[sender] {
			b = appendJournalRecord(b, sender, iv)
			n++
		}
	}
	if err := atomicfile.WriteFile(j.path, b, 0o644); err != nil {
		return fmt.Errorf("rewrite dedup journal: %w", err)
	}
	f, err := os.OpenFile(j.path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("open dedup journal: %w", err)
	}
	if j.f != nil {
		j.f.Close()
	}
	j.f, j.records, j.dirty, j.failed = f, n, false, nil
	j.log.Debug("router: dedup journal rewritten", "records", n, "bytes", len(b), "took", time.Since(start))
	return nil
}

// write appends records for ivs; snapshot gives the whole state when the
// journal is due for a rewrite.
func (j *journal) write(sender string, ivs []forward.Interval, snapshot func() map[string][]forward.Interval) {
	if j.failed != nil {
		return // sync retries with a rewrite
	}
	j.buf = j.buf[:0]
	for _, iv := range ivs {
		j.buf = appendJournalRecord(j.buf, sender, iv)
	}
	if _, err := j.f.Write(j.buf); err != nil {
		j.fail(err)
		return
	}
	j.records += len(ivs)
	j.dirty = true
	if j.records >= compactAfter {
		if err := j.rewrite(snapshot()); err != nil {
			j.fail(err)
		}
	}
}

func (j *journal) fail(err error) {
	j.m.journalErrors.Inc()
	if j.failed == nil {
		j.log.Error("router: dedup journal write failed; deduplication goes on in memory, a restart before the journal recovers may store resent entries twice", "path", j.path, "err", err)
	}
	j.failed = err
}

// sync fsyncs what was written, or rewrites the journal after a failure.
func (j *journal) sync(snapshot func() map[string][]forward.Interval) {
	if j.failed != nil {
		if err := j.rewrite(snapshot()); err != nil {
			j.m.journalErrors.Inc()
			return
		}
		j.log.Info("router: dedup journal recovered", "path", j.path)
		return
	}
	if !j.dirty {
		return
	}
	if err := j.f.Sync(); err != nil {
		j.fail(fmt.Errorf("sync: %w", err))
		return
	}
	j.dirty = false
}

func (j *journal) close(state map[string][]forward.Interval) error {
	err := j.rewrite(state)
	if err != nil {
		// Keep what was appended: sync it.
		if serr := j.f.Sync(); serr != nil {
			err = errors.Join(err, fmt.Errorf("sync dedup journal: %w", serr))
		}
	}
	if cerr := j.f.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("close dedup journal: %w", cerr)
	}
	return err
}
