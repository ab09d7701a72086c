package queue

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"time"

	"github.com/drover-telemetry/drover/internal/atomicfile"
)

var segmentName = regexp.MustCompile(`^([0-9]+)\.dque$`)

func segmentFile(dir string, num int) string {
	return filepath.Join(dir, fmt.Sprintf("%013d.dque", num))
}

// segScan is what one pass over a segment file found.
type segScan struct {
	num  int
	size int64 // file size as found

	goodEnd int64 // offset after the last well-formed item or marker
	items   []itemInfo
	markers int // delete markers that removed an item
	excess  int // delete markers with no item left to remove

	// First problem found, if any. torn: it runs to the end of the file
	// (a write cut short); otherwise it is damage in the middle.
	bad     error
	badOff  int64
	badTorn bool
}

type itemInfo struct {
	off   int64 // offset of the 4-byte length
	seq   uint64
	n     int
	bytes int64
}

func (s *segScan) live() []itemInfo { return s.items[min(s.markers, len(s.items)):] }

// scanSegment reads a segment file and checks every item. It does not change
// the file. It streams: a segment can be far larger than memory should hold.
func scanSegment(path string, num int) (*segScan, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read segment: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat segment: %w", err)
	}
	size := st.Size()
	s := &segScan{num: num, size: size}
	br := bufio.NewReaderSize(f, 1<<20)
	var hdr [4]byte
	var body []byte
	off := int64(0)
	for off < size {
		if size-off < 4 {
			s.bad, s.badOff, s.badTorn = fmt.Errorf("partial length (%d of 4 bytes)", size-off), off, true
			break
		}
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return nil, fmt.Errorf("read segment %s: %w", path, err)
		}
		l := int64(binary.LittleEndian.Uint32(hdr[:]))
		if l == 0 {
			if s.markers < len(s.items) {
				s.markers++
			} else {
				s.excess++
			}
			off += 4
			s.goodEnd = off
			continue
		}
		if l > size-off-4 {
			s.bad, s.badOff, s.badTorn = fmt.Errorf("item of %d bytes, %d left in file", l, size-off-4), off, true
			break
		}
		if int64(cap(body)) < l {
			body = make([]byte, l)
		}
		body = body[:l]
		if _, err := io.ReadFull(br, body); err != nil {
			return nil, fmt.Errorf("read segment %s: %w", path, err)
		}
		r, err := parseItem(body)
		if err == nil {
			_, err = r.entries()
		}
		if err != nil {
			s.bad, s.badOff = err, off
			// A bad last item is a torn write too: the length landed, the
			// body did not (or only in part).
			s.badTorn = off+4+l == size
			break
		}
		s.items = append(s.items, itemInfo{off: off, seq: r.seq, n: r.n, bytes: r.payloadBytes()})
		off += 4 + l
		s.goodEnd = off
	}
	return s, nil
}

// repairKind names what Open had to fix, for logs and metrics.
const (
	repairTornTail      = "torn_tail"
	repairQuarantine    = "quarantine"
	repairExcessMarkers = "excess_markers"
	repairConsumed      = "consumed_segment"
	repairMissing       = "missing_segment"
	repairPadding       = "padding"
)

// repairResult is the state of the segments folder after repair.
type repairResult struct {
	first, last int    // segment numbers; 0 when there are none
	headOff     int64  // offset of the first live item in the first segment
	tailSize    int64  // size of the last segment file
	liveRecords int64  //
	liveEntries int64  //
	liveBytes   int64  //
	maxSeq      uint64 // one past the highest entry sequence seen, live or removed
	repairs     map[string]int
}

// repairSegments scans dir (dque's segments folder) and fixes what a crash or
// damage left, so that dque opens it and drains it to the end. See doc.go.
func repairSegments(dir, quarantineDir string, itemsPerSegment, maxItemBytes int, lg *slog.Logger) (*repairResult, error) {
	res := &repairResult{repairs: map[string]int{}}
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return res, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list segments: %w", err)
	}
	var nums []int
	for _, e := range ents {
		if m := segmentName.FindStringSubmatch(e.Name()); m != nil && !e.IsDir() {
			n, err := strconv.Atoi(m[1])
			if err != nil || n <= 0 {
				continue
			}
			nums = append(nums, n)
		}
	}
	if len(nums) == 0 {
		return res, nil
	}
	slices.Sort(nums)
	changedDir := false

	scans := make(map[int]*segScan, len(nums))
	for i, num := range nums {
		path := segmentFile(dir, num)
		s, err := scanSegment(path, num)
		if err != nil {
			return nil, err
		}
		isLast := i == len(nums)-1
		if s.bad != nil {
			// A torn write can only be the last thing written: at the end
			// of the last segment, and no longer than one item.
			if s.badTorn && isLast && s.size-s.badOff <= int64(4+maxItemBytes) {
				lg.Warn("queue: cutting torn tail of segment", "segment", path, "offset", s.badOff, "bytes", s.size-s.badOff, "cause", s.bad, "last_segment", isLast)
				res.repairs[repairTornTail]++
			} else {
				q := filepath.Join(quarantineDir, fmt.Sprintf("%013d.dque.%d", num, time.Now().UnixNano()))
				if err := copyFile(path, q); err != nil {
					return nil, fmt.Errorf("quarantine segment %s: %w", path, err)
				}
				lg.Error("queue: damaged segment quarantined; records after the damage are lost", "segment", path, "copy", q, "offset", s.badOff, "bytes_lost", s.size-s.badOff, "cause", s.bad)
				res.repairs[repairQuarantine]++
			}
			if err := truncateSync(path, s.badOff); err != nil {
				return nil, err
			}
			s.size, s.bad = s.badOff, nil
		}
		if s.excess > 0 {
			if err := dropExcessMarkers(path, s); err != nil {
				return nil, err
			}
			lg.Warn("queue: dropped excess delete markers", "segment", path, "markers", s.excess)
			res.repairs[repairExcessMarkers]++
			changedDir = true
		}
		scans[num] = s
	}

	// Consumed segments at the head that dque did not get to delete.
	for len(nums) > 1 && len(scans[nums[0]].live()) == 0 {
		path := segmentFile(dir, nums[0])
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove consumed segment: %w", err)
		}
		lg.Info("queue: removed consumed segment left by a crash", "segment", path)
		res.repairs[repairConsumed]++
		delete(scans, nums[0])
		nums = nums[1:]
		changedDir = true
	}

	// A lone segment that is full and fully consumed: dque removes the last
	// item of a full segment by writing its delete marker, then deleting
	// the file and starting the next; a crash between the two leaves it.
	// dque would keep it as its head, empty, and append to a new tail:
	// every later removal would find the head empty. Start the next
	// segment here, as dque would have.
	if len(nums) == 1 {
		s := scans[nums[0]]
		if len(s.live()) == 0 && len(s.items) >= itemsPerSegment {
			next := nums[0] + 1
			if err := writeFileSync(segmentFile(dir, next), nil); err != nil {
				return nil, fmt.Errorf("start the next segment: %w", err)
			}
			if err := os.Remove(segmentFile(dir, nums[0])); err != nil {
				return nil, fmt.Errorf("remove consumed segment: %w", err)
			}
			lg.Info("queue: replaced a consumed segment left by a crash with the next one", "segment", segmentFile(dir, nums[0]))
			res.repairs[repairConsumed]++
			delete(scans, nums[0])
			scans[next] = &segScan{num: next}
			nums = []int{next}
			changedDir = true
		}
	}

	// Every segment before the last must hold itemsPerSegment items, or dque
	// stops draining there; fill gaps and short segments with filler records.
	first, last := nums[0], nums[len(nums)-1]
	for num := first; num < last; num++ {
		s, ok := scans[num]
		if !ok {
			lg.Error("queue: segment file missing; its records are lost", "segment", segmentFile(dir, num))
			res.repairs[repairMissing]++
			s = &segScan{num: num}
			scans[num] = s
			changedDir = true
		}
		if have := len(s.items); have < itemsPerSegment {
			if err := padSegment(segmentFile(dir, num), s, itemsPerSegment-have); err != nil {
				return nil, err
			}
			if ok {
				lg.Warn("queue: padded short segment", "segment", segmentFile(dir, num), "items", have, "fillers", itemsPerSegment-have)
				res.repairs[repairPadding]++
			}
		}
	}
	if changedDir {
		if err := syncDir(dir); err != nil {
			return nil, err
		}
	}

	res.first, res.last = first, last
	for num := first; num <= last; num++ {
		s := scans[num]
		for _, it := range s.items {
			if end := it.seq + uint64(it.n); it.n > 0 && end > res.maxSeq {
				res.maxSeq = end
			}
		}
		for _, it := range s.live() {
			res.liveRecords++
			res.liveEntries += int64(it.n)
			res.liveBytes += it.bytes
		}
		if num == last {
			res.tailSize = s.size
		}
	}
	if fs := scans[first]; fs.markers < len(fs.items) {
		res.headOff = fs.items[fs.markers].off
	} else {
		res.headOff = scans[first].size
	}
	return res, nil
}

// dropExcessMarkers rewrites a segment without its excess delete markers.
func dropExcessMarkers(path string, s *segScan) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read segment: %w", err)
	}
	out := make([]byte, 0, len(b))
	items, markers := 0, 0
	var offs []int64
	for off := 0; off+4 <= len(b); {
		l := int(binary.LittleEndian.Uint32(b[off:]))
		if l == 0 {
			if markers < items {
				markers++
				out = append(out, b[off:off+4]...)
			}
			off += 4
			continue
		}
		offs = append(offs, int64(len(out)))
		out = append(out, b[off:off+4+l]...)
		items++
		off += 4 + l
	}
	for i := range s.items {
		s.items[i].off = offs[i]
	}
	s.excess, s.size, s.goodEnd = 0, int64(len(out)), int64(len(out))
	return replaceFile(path, out)
}

// padSegment appends k filler records (n = 0) to a segment, creating it if
// it is missing, and syncs it.
func padSegment(path string, s *segScan, k int) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("open segment to pad: %w", err)
	}
	defer f.Close()
	var buf []byte
	off := s.size
	for range k {
		body, err := gobItem(encodeRecord(0, nil))
		if err != nil {
			return err
		}
		s.items = append(s.items, itemInfo{off: off + int64(len(buf))})
		buf = binary.LittleEndian.AppendUint32(buf, uint32(len(body)))
		buf = append(buf, body...)
	}
	if _, err := f.Write(buf); err != nil {
		return fmt.Errorf("pad segment: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync padded segment: %w", err)
	}
	s.size += int64(len(buf))
	return nil
}

func truncateSync(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open segment to cut: %w", err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("cut segment: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync cut segment: %w", err)
	}
	return nil
}

// replaceFile replaces path with data atomically and durably.
func replaceFile(path string, data []byte) error {
	return atomicfile.WriteFile(path, data, 0o644)
}

func writeFileSync(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return f.Close()
}

func copyFile(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return syncDir(filepath.Dir(dst))
}

// syncDir fsyncs a folder after entries were added to or removed from it.
func syncDir(dir string) error { return atomicfile.SyncDir(dir) }
