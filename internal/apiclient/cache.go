package apiclient

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"os"
	"strings"
	"time"

	"github.com/drover-telemetry/drover/internal/atomicfile"
)

// A cache file:
//
//	drover-cache 1\n                       the envelope's magic and format
//	{"kind":"registry","format":1,...}\n   CacheMeta, one JSON line
//	payload                                the kind's own encoding
//	trailer (16 bytes)                     payload length (uint64 LE), CRC-32C
//	                                       (Castagnoli) of the meta line and the
//	                                       payload (uint32 LE), "DRVC"
//
// The trailer last: a file cut anywhere lacks it, or has one whose length
// or checksum does not agree.
const (
	cacheMagic   = "drover-cache 1\n"
	trailerMagic = "DRVC"
	trailerSize  = 16
	maxMetaLine  = 4 << 10
)

// ErrCacheDamaged is a cache file that is not whole: refuse it and take a
// fresh copy from the API.
var ErrCacheDamaged = errors.New("cache damaged")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// CacheMeta describes a cache file's content.
type CacheMeta struct {
	// Kind names what the payload is ("registry", "live-tokens"); a
	// reader refuses another kind.
	Kind string `json:"kind"`
	// Format is the payload's encoding version; a reader refuses one it
	// does not know.
	Format int `json:"format"`
	// Feed and Version are where the copy stands in the change feed: a
	// follower resumes from them.
	Feed    string `json:"feed"`
	Version int64  `json:"version"`
	// Source is the API's URL the copy came from.
	Source string `json:"source"`
	// Count is how many items the payload holds (for logs).
	Count     int       `json:"count"`
	WrittenAt time.Time `json:"written_at"`
}

// WriteCache writes a cache file atomically and durably (mode 0600: it
// holds token hashes). payload streams the kind's encoding.
func WriteCache(path string, meta CacheMeta, payload func(w io.Writer) error) error {
	if meta.WrittenAt.IsZero() {
		meta.WrittenAt = time.Now().UTC()
	}
	line, err := json.Marshal(meta)
	if err != nil {
		return fmt.Errorf("write cache: %w", err)
	}
	line = append(line, '\n')
	return atomicfile.WriteFunc(path, 0o600, func(w io.Writer) error {
		if _, err := io.WriteString(w, cacheMagic); err != nil {
			return err
		}
		crc := crc32.New(castagnoli)
		cw := &countWriter{w: io.MultiWriter(w, crc)}
		if _, err := cw.Write(line); err != nil {
			return err
		}
		cw.n = 0
		if err := payload(cw); err != nil {
			return err
		}
		var tr [trailerSize]byte
		binary.LittleEndian.PutUint64(tr[0:8], uint64(cw.n))
		binary.LittleEndian.PutUint32(tr[8:12], crc.Sum32())
		copy(tr[12:], trailerMagic)
		_, err := w.Write(tr[:])
		return err
	})
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// CacheReader reads a cache file: Meta at once, the payload through
// Payload, and Verify once the payload has been read. Nothing read from
// the payload may be used before Verify returns nil.
type CacheReader struct {
	Meta CacheMeta

	f       *os.File
	crc     hash.Hash32
	payload *bufio.Reader
	left    int64 // payload bytes not yet read
	want    uint32
}

// OpenCache opens the cache file at path and checks its envelope: magic,
// meta line, kind and format, trailer and lengths. A missing file is an
// error satisfying errors.Is(err, fs.ErrNotExist); a file that is not a
// whole cache of this kind and format, ErrCacheDamaged.
func OpenCache(path, kind string, format int) (*CacheReader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	cr, err := openCache(f, kind, format)
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	return cr, nil
}

func damaged(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrCacheDamaged, fmt.Sprintf(format, a...))
}

func openCache(f *os.File, kind string, format int) (*CacheReader, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := st.Size()
	if size < int64(len(cacheMagic))+2+trailerSize {
		return nil, damaged("%d bytes: too short to be a cache", size)
	}
	var tr [trailerSize]byte
	if _, err := f.ReadAt(tr[:], size-trailerSize); err != nil {
		return nil, fmt.Errorf("read cache trailer: %w", err)
	}
	if string(tr[12:]) != trailerMagic {
		return nil, damaged("no trailer (a cut file?)")
	}
	payloadLen := int64(binary.LittleEndian.Uint64(tr[0:8]))
	r := bufio.NewReaderSize(io.NewSectionReader(f, 0, size-trailerSize), 256<<10)
	magic := make([]byte, len(cacheMagic))
	if _, err := io.ReadFull(r, magic); err != nil || string(magic) != cacheMagic {
		return nil, damaged("not a drover cache file (magic %q)", magic)
	}
	line, err := r.ReadSlice('\n')
	if err != nil || len(line) > maxMetaLine {
		return nil, damaged("no meta line")
	}
	cr := &CacheReader{f: f, crc: crc32.New(castagnoli), want: binary.LittleEndian.Uint32(tr[8:12])}
	cr.crc.Write(line)
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cr.Meta); err != nil {
		return nil, damaged("meta line: %v", err)
	}
	if cr.Meta.Kind != kind {
		return nil, damaged("a cache of %q, not of %q", cr.Meta.Kind, kind)
	}
	if cr.Meta.Format != format {
		return nil, damaged("%s cache format %d; this build reads format %d", kind, cr.Meta.Format, format)
	}
	header := int64(len(cacheMagic) + len(line))
	if header+payloadLen+trailerSize != size {
		return nil, damaged("trailer says %d payload bytes; the file has %d", payloadLen, size-header-trailerSize)
	}
	cr.left = payloadLen
	cr.payload = r
	return cr, nil
}

// Payload returns the payload reader: exactly the payload's bytes, each
// counted into the checksum.
func (c *CacheReader) Payload() io.Reader { return c }

// Read reads the payload.
func (c *CacheReader) Read(p []byte) (int, error) {
	if c.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.payload.Read(p)
	c.crc.Write(p[:n])
	c.left -= int64(n)
	if err == io.EOF && c.left > 0 {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// Verify checks that the payload was read to its end and that its
// checksum is right.
func (c *CacheReader) Verify() error {
	if c.left != 0 {
		return damaged("%d payload bytes left unread: the payload does not parse as written", c.left)
	}
	if got := c.crc.Sum32(); got != c.want {
		return damaged("checksum %08x, the trailer says %08x", got, c.want)
	}
	return nil
}

// Close closes the file.
func (c *CacheReader) Close() error { return c.f.Close() }

// Damaged reports whether err says a cache file is damaged (as opposed to
// missing or unreadable).
func Damaged(err error) bool { return errors.Is(err, ErrCacheDamaged) }

// Describe names a cache for logs: its kind, version and age.
func (m CacheMeta) Describe() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s cache of %d items at feed version %d", m.Kind, m.Count, m.Version)
	if !m.WrittenAt.IsZero() {
		fmt.Fprintf(&b, ", written %s ago", time.Since(m.WrittenAt).Round(time.Second))
	}
	return b.String()
}
