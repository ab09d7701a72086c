package queue

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Sizing a queue to its volume (Options.MaxBytes = 0). See doc.go, "Bounds
// and back-pressure", and docs/reliability.md for what it means in hours of
// sink outage.
const (
	// DefaultDiskShare is the share of a volume that the auto-bounded
	// queues of one process on it may hold together, of the space that was
	// theirs when the bounds were set: the free space plus what those
	// queues held already. The rest is headroom: a queue's files hold a
	// little more than its entry bytes (framing, and the consumed records of
	// its head segment until the whole segment is consumed), and the volume
	// may hold other files.
	DefaultDiskShare = 0.8
	// MinAutoBytes is the floor of an automatic bound: a nearly full volume
	// still gets a working queue, whose real limit is then the disk (a full
	// disk is back-pressure too: ErrDiskFull).
	MinAutoBytes int64 = 64 << 20
	// volumeStatInterval is how often drover_queue_volume_free_bytes is
	// refreshed.
	volumeStatInterval = 10 * time.Second
)

// volumes holds, per filesystem (device number), the auto-bounded queues
// open in this process on it: they split the volume between them.
var volumes = struct {
	sync.Mutex
	m map[uint64]map[*Queue]struct{}
}{m: map[uint64]map[*Queue]struct{}{}}

// auto reports whether the queue's bound comes from its volume.
func (q *Queue) auto() bool { return q.opts.MaxBytes == 0 }

// joinVolume adds an auto-bounded queue to its volume's set and sets the
// bound of every queue in the set: each gets
//
//	max(MinAutoBytes, share × (free + held) / n)
//
// where free is what statfs says the volume has available, held is what
// the n auto-bounded queues of this process on that volume hold in their
// files, and share is each queue's Options.DiskShare.
func (q *Queue) joinVolume() error {
	dev, err := deviceOf(q.dir)
	if err != nil {
		return err
	}
	volumes.Lock()
	defer volumes.Unlock()
	set := volumes.m[dev]
	if set == nil {
		set = map[*Queue]struct{}{}
		volumes.m[dev] = set
	}
	set[q] = struct{}{}
	q.dev = dev
	if err := rebalance(set, q); err != nil {
		delete(set, q)
		if len(set) == 0 {
			delete(volumes.m, dev)
		}
		return err
	}
	return nil
}

// leaveVolume removes a closed queue from its volume's set; the others get
// its share.
func (q *Queue) leaveVolume() {
	if !q.auto() {
		return
	}
	volumes.Lock()
	defer volumes.Unlock()
	set := volumes.m[q.dev]
	if _, ok := set[q]; !ok {
		return
	}
	delete(set, q)
	if len(set) == 0 {
		delete(volumes.m, q.dev)
		return
	}
	if err := rebalance(set, nil); err != nil {
		// The bounds stay as they were: smaller than they could be.
		q.log.Warn("queue: resize the other queues on this volume", "err", err)
	}
}

// rebalance sets the bound of every queue in set (volumes is locked).
// joined, when not nil, is the queue that just joined: it logs the result.
func rebalance(set map[*Queue]struct{}, joined *Queue) error {
	var dir string
	var held int64
	names := make([]string, 0, len(set))
	for o := range set {
		dir = o.dir
		held += o.diskBytes()
		names = append(names, o.opts.Name)
	}
	free, _, err := statVolume(dir)
	if err != nil {
		return err
	}
	slices.Sort(names)
	n := int64(len(set))
	for o := range set {
		b := max(MinAutoBytes, int64(o.opts.DiskShare*float64(free+held))/n)
		o.setBound(b)
		if o == joined {
			o.log.Info("queue: bound set from the volume's space: max(floor, share × (free + held by these queues) / queues)",
				"bound_bytes", b, "share", o.opts.DiskShare, "free_bytes", free, "held_bytes", held,
				"floor_bytes", MinAutoBytes, "queues", strings.Join(names, ","))
		} else {
			o.log.Debug("queue: bound reset: another queue joined or left its volume", "bound_bytes", b, "queues", len(set))
		}
	}
	return nil
}

// setBound makes b the queue's bound and updates its gauges. Negative: none.
func (q *Queue) setBound(b int64) {
	q.mu.Lock()
	q.maxBytes = b
	liveB := q.liveBytes
	q.mu.Unlock()
	q.m.maxBytes.Set(float64(b))
	q.m.fillRatio.Set(fillRatio(liveB, b))
}

// MaxBytes returns the bound in effect on the entry bytes the queue holds:
// Options.MaxBytes, or the share of its volume it was given (Options.MaxBytes
// = 0); negative when unbounded.
func (q *Queue) MaxBytes() int64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.maxBytes
}

// setDepth updates the depth gauges and the fill ratio.
func (q *Queue) setDepth(entries, bytes, bound int64) {
	q.m.depthEntries.Set(float64(entries))
	q.m.depthBytes.Set(float64(bytes))
	q.m.fillRatio.Set(fillRatio(bytes, bound))
}

// fillRatio is held / bound, 0 for an unbounded queue.
func fillRatio(held, bound int64) float64 {
	if bound <= 0 {
		return 0
	}
	return float64(held) / float64(bound)
}

// refreshVolumeFree sets drover_queue_volume_{free,size}_bytes.
func (q *Queue) refreshVolumeFree() {
	free, size, err := statVolume(q.dir)
	if err != nil {
		q.log.Debug("queue: statfs", "err", err)
		return
	}
	q.m.volumeFree.Set(float64(free))
	q.m.volumeSize.Set(float64(size))
}

// diskBytes returns the size of the queue's segment files.
func (q *Queue) diskBytes() int64 {
	ents, err := os.ReadDir(q.segDir)
	if err != nil {
		return 0
	}
	var n int64
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
	}
	return n
}

// statVolume returns the bytes available to an unprivileged user on the
// filesystem holding dir, and its size.
func statVolume(dir string) (free, size int64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	bs := uint64(st.Bsize)
	return clampInt64(uint64(st.Bavail) * bs), clampInt64(uint64(st.Blocks) * bs), nil
}

func clampInt64(v uint64) int64 {
	if v > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(v)
}

// deviceOf returns the device number of the filesystem holding dir.
func deviceOf(dir string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Clean(dir), &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", dir, err)
	}
	return uint64(st.Dev), nil // a conversion: int32 on some systems
}
