package queue

// The commit path: the single committer that turns groups of appends into
// dque items, syncs them once, and answers the appends (see doc.go, "When
// fsync happens"), and what it does when storage fails.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// commitLoop is the single writer: it takes the groups gathered since its
// last round, writes them, syncs once, and answers their appends.
func (q *Queue) commitLoop() {
	defer close(q.committerDone)
	stopping := false
	var retry <-chan time.Time
	var lastCommit time.Time // when the last commit ended
	for {
		select {
		case <-q.kick:
		case <-q.stop:
			stopping = true
		case <-retry:
		}
		q.mu.Lock()
		failed := q.failed
		q.mu.Unlock()
		if failed != nil && !stopping {
			if err := q.recoverStorage(); err != nil {
				q.log.Debug("queue: storage still failing", "err", err)
				retry = time.After(q.opts.RetryInterval)
			} else {
				retry = nil
			}
		}
		for {
			if !stopping && q.gather(lastCommit) {
				stopping = true // what was gathered is still committed below
			}
			q.mu.Lock()
			groups := q.sealed
			q.sealed = nil
			if q.pending != nil && len(q.pending.entries) > 0 {
				groups = append(groups, q.pending)
				q.pending = nil
			}
			failed := q.failed
			q.mu.Unlock()
			if len(groups) == 0 {
				break
			}
			if failed != nil {
				q.finish(groups, failed)
				continue
			}
			err := q.commit(groups)
			lastCommit = time.Now()
			if err != nil {
				q.finish(groups, q.storageFailed(err))
				retry = time.After(q.opts.RetryInterval)
			}
		}
		if stopping {
			return
		}
	}
}

// gather waits CommitDelay before a commit, so that the appends arriving
// meanwhile share its fsync, when appends are waiting and the last commit
// ended less than CommitDelay ago (they arrive faster than that: there are
// others to share with; a lone append is committed at once). A sealed
// group (a full record) or a stop ends the wait early. It reports whether
// the queue is stopping.
func (q *Queue) gather(lastCommit time.Time) bool {
	d := q.opts.CommitDelay
	if d <= 0 || time.Since(lastCommit) >= d {
		return false
	}
	q.mu.Lock()
	waiting := q.failed == nil && (len(q.sealed) > 0 || q.pending != nil && len(q.pending.entries) > 0)
	q.mu.Unlock()
	if !waiting {
		return false
	}
	q.m.held.Inc()
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			return false
		case <-q.stop:
			return true
		case <-q.kick:
			q.mu.Lock()
			full := len(q.sealed) > 0
			q.mu.Unlock()
			if full {
				return false
			}
		}
	}
}

// finish answers groups that will not be committed (or were, when err is nil).
func (q *Queue) finish(groups []*group, err error) {
	q.account(groups, err)
	q.answer(groups, err)
}

// account moves the groups' entries from pending to live (or drops them
// from pending when they failed).
func (q *Queue) account(groups []*group, err error) {
	var n, b int64
	for _, g := range groups {
		n += int64(len(g.entries))
		b += int64(g.bytes)
	}
	q.mu.Lock()
	q.pendEntries -= n
	q.pendBytes -= b
	if err == nil {
		q.liveEntries += n
		q.liveBytes += b
	}
	live, liveB, bound := q.liveEntries, q.liveBytes, q.maxBytes
	q.mu.Unlock()
	if err == nil {
		q.m.appendedTotal.Add(float64(n))
		q.m.appendedBytes.Add(float64(b))
		q.setDepth(live, liveB, bound)
	}
}

func (q *Queue) answer(groups []*group, err error) {
	for _, g := range groups {
		g.err = err
		close(g.done)
	}
}

// commit writes groups as records, one per group, and makes them durable.
func (q *Queue) commit(groups []*group) error {
	start := time.Now()
	var n uint64
	for _, g := range groups {
		n += uint64(len(g.entries))
	}
	if q.nextSeq+n > q.reservedSeq {
		r := q.nextSeq + n + seqStep
		if err := writeSeqFile(filepath.Join(q.dir, "seq"), r); err != nil {
			return err
		}
		q.reservedSeq = r
	}
	recs := make([]*record, len(groups))
	for i, g := range groups {
		g.firstSeq = q.nextSeq
		q.nextSeq += uint64(len(g.entries))
		recs[i] = &record{raw: encodeRecord(g.firstSeq, g.entries)}
	}

	q.dqMu.Lock()
	for _, r := range recs {
		if err := q.dq.Enqueue(r); err != nil {
			q.dqMu.Unlock()
			return fmt.Errorf("enqueue record: %w", err)
		}
		r.raw = nil // dque keeps the object; the bytes are on disk
	}
	_, last := q.dq.SegmentNumbers()
	var nf *os.File
	if last != q.tailNum {
		var err error
		if nf, err = os.Open(segmentFile(q.segDir, last)); err != nil {
			q.dqMu.Unlock()
			return fmt.Errorf("open new tail segment: %w", err)
		}
	}
	// The committed end is the tail's size taken under dqMu: the remover
	// writes its delete markers to the same file under dqMu, and a stat
	// racing one that straddles a page boundary sees only part of it.
	tf := q.tailF
	if nf != nil {
		tf = nf
	}
	st, err := tf.Stat()
	q.dqMu.Unlock()
	if err != nil {
		if nf != nil {
			nf.Close()
		}
		return fmt.Errorf("stat segment %d: %w", last, err)
	}

	if nf != nil {
		if q.opts.Sync == SyncAlways {
			// Records of this round may be in the old tail too.
			if err := q.tailF.Sync(); err != nil {
				nf.Close()
				return fmt.Errorf("sync segment %d: %w", q.tailNum, err)
			}
			if err := syncDir(q.segDir); err != nil {
				nf.Close()
				return err
			}
		}
		q.tailF.Close()
		q.tailF, q.tailNum = nf, last
	}
	if q.opts.Sync == SyncAlways {
		if err := q.tailF.Sync(); err != nil {
			return fmt.Errorf("sync segment %d: %w", q.tailNum, err)
		}
		q.m.fsyncs.Inc()
	}
	q.m.fsyncSeconds.Observe(time.Since(start).Seconds())
	q.m.records.Add(float64(len(recs)))

	// Count them, then show them to readers, then answer their appenders: a
	// reader may see records before their appenders return, never after.
	q.account(groups, nil)
	var ne, nb int64
	for _, g := range groups {
		ne += int64(len(g.entries))
		nb += int64(g.bytes)
	}
	q.rmu.Lock()
	q.committed = pos{last, st.Size()}
	q.committedEntries += ne
	q.committedBytes += nb
	for _, c := range q.cursors {
		c.setLagLocked()
	}
	close(q.avail)
	q.avail = make(chan struct{})
	q.rmu.Unlock()
	q.answer(groups, nil)
	return nil
}

// storageFailed turns a write or sync error into the error appends get until
// the queue has recovered, and logs it once.
func (q *Queue) storageFailed(err error) error {
	q.m.storageErrors.Inc()
	q.m.degraded.Set(1)
	var e error
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EFBIG) || errors.Is(err, syscall.EDQUOT) {
		e = fmt.Errorf("%w: %w", ErrDiskFull, err)
	} else {
		e = fmt.Errorf("%w: %w", ErrStorage, err)
	}
	q.mu.Lock()
	first := q.failed == nil
	q.failed = e
	q.mu.Unlock()
	if first {
		q.log.Error("queue: storage failed; refusing appends until it recovers", "err", err)
	}
	return e
}

// recoverStorage reopens the queue after a storage failure: the failed
// write may have left a torn tail, which dque would otherwise write after.
func (q *Queue) recoverStorage() error {
	q.dqMu.Lock()
	if q.dq != nil {
		_ = q.dq.Close()
		q.dq = nil
	}
	q.dqMu.Unlock()
	if err := q.open(); err != nil {
		return err
	}
	q.log.Info("queue: storage recovered; accepting appends again")
	return nil
}
