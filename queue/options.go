package queue

import (
	"errors"
	"fmt"
	"time"
)

// SyncPolicy says when an append is acknowledged. See doc.go.
type SyncPolicy int

const (
	// SyncAlways acknowledges an append after fsync (group commit). Default.
	SyncAlways SyncPolicy = iota
	// SyncNever acknowledges after write(2): survives kill -9, not power loss.
	SyncNever
)

// String returns the policy's flag name.
func (p SyncPolicy) String() string {
	switch p {
	case SyncAlways:
		return "always"
	case SyncNever:
		return "never"
	}
	return fmt.Sprintf("SyncPolicy(%d)", int(p))
}

// Options configure a Queue. The zero value of a field means its default.
type Options struct {
	// Name labels the queue's metrics (queue="...") and logs. Default "queue".
	Name string
	// MaxBytes bounds the entry bytes held (appended, not yet removed).
	// Negative: unbounded (the disk is the bound). 0, the default: a share
	// of the queue's volume, set at Open from the space it has (see
	// doc.go, "Bounds and back-pressure"; [Queue.MaxBytes] tells the
	// result).
	MaxBytes int64
	// DiskShare is, for a queue sized from its volume (MaxBytes 0), the
	// share of the volume's space the auto-bounded queues of the process on
	// it may hold together. Default DefaultDiskShare; at most 1.
	DiskShare float64
	// MaxEntries bounds the entries held. Default 0: unbounded (MaxBytes rules).
	MaxEntries int64
	// MaxRecordBytes caps one record, which is what one Append may carry and
	// what the committer packs into one dque item. Default 512 KiB.
	MaxRecordBytes int
	// ItemsPerSegment is dque's records per segment file. dque holds the
	// first and last segment's items in memory, which stays small here
	// because the items it holds are emptied (a few dozen bytes each; see
	// record.GobDecode). Each new segment costs a file creation and two extra
	// fsyncs on the commit path, so fewer, larger segments keep the ack
	// latency's tail down; disk space is reclaimed a segment at a time.
	// Default 1024.
	ItemsPerSegment int
	// Sync is the acknowledgement policy. Default SyncAlways.
	Sync SyncPolicy
	// CommitDelay, when more than 0, holds a commit that follows the last
	// one by less than CommitDelay for CommitDelay, so that the appends
	// arriving meanwhile share its record and fsync (PostgreSQL's
	// commit_delay). It trades up to CommitDelay of every acknowledgement's
	// latency for fewer fsyncs and records per append where appends are
	// many and small (devices that send one reading a frame). A lone
	// append is never held. Default 0: commit as soon as the last commit
	// ends (group commit gathers only what arrives during an fsync).
	CommitDelay time.Duration
	// RemovalSyncInterval is how often delete markers are fsynced. Default 1s.
	RemovalSyncInterval time.Duration
	// RetryInterval is how often a queue whose disk failed tries again.
	// Default 1s.
	RetryInterval time.Duration
}

func (o Options) withDefaults() Options {
	if o.Name == "" {
		o.Name = "queue"
	}
	if o.DiskShare == 0 {
		o.DiskShare = DefaultDiskShare
	}
	if o.MaxRecordBytes == 0 {
		o.MaxRecordBytes = 512 << 10
	}
	if o.ItemsPerSegment == 0 {
		o.ItemsPerSegment = 1024
	}
	if o.RemovalSyncInterval == 0 {
		o.RemovalSyncInterval = time.Second
	}
	if o.RetryInterval == 0 {
		o.RetryInterval = time.Second
	}
	return o
}

func (o Options) validate() error {
	var errs []error
	if o.MaxRecordBytes < 1024 {
		errs = append(errs, fmt.Errorf("max record bytes %d: want at least 1024", o.MaxRecordBytes))
	}
	if o.ItemsPerSegment < 2 {
		errs = append(errs, fmt.Errorf("items per segment %d: want at least 2", o.ItemsPerSegment))
	}
	if !(o.DiskShare > 0 && o.DiskShare <= 1) {
		errs = append(errs, fmt.Errorf("disk share %v: want more than 0, at most 1", o.DiskShare))
	}
	if o.CommitDelay < 0 || o.CommitDelay > time.Second {
		errs = append(errs, fmt.Errorf("commit delay %v: want 0 to 1s", o.CommitDelay))
	}
	if o.Sync != SyncAlways && o.Sync != SyncNever {
		errs = append(errs, fmt.Errorf("sync policy %d unknown", o.Sync))
	}
	return errors.Join(errs...)
}

// Errors returned by the queue. Test with errors.Is.
var (
	// ErrFull means the append would cross MaxBytes or MaxEntries. Nothing
	// was stored; retry later (back-pressure).
	ErrFull = errors.New("queue full")
	// ErrStorage means the disk failed a write or a sync. Nothing of the
	// failed append is acknowledged; the queue repairs itself and retries.
	ErrStorage = errors.New("queue storage failed")
	// ErrDiskFull is the ErrStorage of a full disk or file size limit; an
	// error that Is ErrDiskFull also Is ErrStorage.
	ErrDiskFull = fmt.Errorf("%w: disk full", ErrStorage)
	// ErrTooLarge means one Append carries more than MaxRecordBytes.
	ErrTooLarge = errors.New("append larger than a record may be")
	// ErrClosed means the queue is closed.
	ErrClosed = errors.New("queue closed")
	// ErrLocked means another process (or Queue) holds the directory.
	ErrLocked = errors.New("queue directory locked by another process")
)

// Retryable reports whether err is back-pressure: the append was refused
// now and may succeed later (queue full, disk full or failing).
func Retryable(err error) bool {
	return errors.Is(err, ErrFull) || errors.Is(err, ErrStorage)
}
