package registry

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/drover-telemetry/drover/internal/apiclient"
	"github.com/drover-telemetry/drover/telemetry"
)

// The registry cache's payload, in apiclient's cache envelope (kind
// "registry", format 1), little-endian varints:
//
//	uvarint L, then L-1 label triples (index 0, no labels, is implied):
//	    string fleet, string class, string region
//	uvarint N, then N devices:
//	    string id, byte state, byte flags (1: token, 2: previous token),
//	    uvarint label index, [32]byte token (flag 1),
//	    [32]byte previous token, varint its end in unix ms (flag 2)
//
// string is a uvarint length and the bytes. About 60 bytes per device:
// 60 MB for a million, written in well under a second.
const (
	cacheKind   = "registry"
	cacheFormat = 1

	flagToken = 1
	flagPrev  = 2
)

// writeRegistryCache writes r to the cache file at path.
func writeRegistryCache(path string, r *Registry, source string) error {
	meta := apiclient.CacheMeta{Kind: cacheKind, Format: cacheFormat, Feed: r.feed, Version: r.version, Source: source, Count: r.n}
	return apiclient.WriteCache(path, meta, func(w io.Writer) error {
		e := encoder{w: w}
		e.uvarint(uint64(len(r.labels)))
		for _, l := range r.labels[1:] {
			e.string(l.Fleet)
			e.string(l.Class)
			e.string(l.Region)
		}
		e.uvarint(uint64(r.n))
		n := 0
		err := r.each(func(id string, x rec, p *prevToken) error {
			e.string(id)
			flags := byte(0)
			if x.hasToken {
				flags |= flagToken
			}
			if p != nil {
				flags |= flagPrev
			}
			e.bytes([]byte{byte(x.state), flags})
			e.uvarint(uint64(x.labels))
			if x.hasToken {
				e.bytes(x.token[:])
			}
			if p != nil {
				e.bytes(p.token[:])
				e.varint(p.until)
			}
			n++
			return e.err
		})
		if err == nil && n != r.n {
			err = fmt.Errorf("registry of %d devices holds %d", r.n, n)
		}
		return err
	})
}

type encoder struct {
	w   io.Writer
	buf [binary.MaxVarintLen64]byte
	err error
}

func (e *encoder) bytes(b []byte) {
	if e.err == nil {
		_, e.err = e.w.Write(b)
	}
}

func (e *encoder) uvarint(v uint64) { e.bytes(e.buf[:binary.PutUvarint(e.buf[:], v)]) }

func (e *encoder) varint(v int64) { e.bytes(e.buf[:binary.PutVarint(e.buf[:], v)]) }

func (e *encoder) string(s string) {
	e.uvarint(uint64(len(s)))
	if e.err == nil {
		_, e.err = io.WriteString(e.w, s)
	}
}

// readRegistryCache reads the cache file at path into a new Registry made
// with b. Anything but a whole, well-formed cache is an error (missing:
// fs.ErrNotExist; damaged: apiclient.ErrCacheDamaged), and b's current
// registry is then unchanged.
func readRegistryCache(path string, b *builder) (*Registry, apiclient.CacheMeta, error) {
	cr, err := apiclient.OpenCache(path, cacheKind, cacheFormat)
	if err != nil {
		return nil, apiclient.CacheMeta{}, err
	}
	defer cr.Close()
	trial := newBuilder()
	r, err := decodeRegistry(bufio.NewReaderSize(cr.Payload(), 64<<10), trial, cr.Meta)
	if err != nil {
		return nil, cr.Meta, fmt.Errorf("%w: %v", apiclient.ErrCacheDamaged, err)
	}
	if err := cr.Verify(); err != nil {
		return nil, cr.Meta, err
	}
	*b = *trial
	return r, cr.Meta, nil
}

// maxCacheString bounds a string of the cache (ids and labels are at most
// 128 bytes).
const maxCacheString = 1024

func decodeRegistry(rd *bufio.Reader, b *builder, meta apiclient.CacheMeta) (*Registry, error) {
	d := decoder{r: rd}
	nl := d.uvarint()
	if d.err == nil && (nl < 1 || nl > 1<<24) {
		return nil, fmt.Errorf("%d label triples", nl)
	}
	for i := uint64(1); i < nl && d.err == nil; i++ {
		l := Labels{Fleet: d.string(), Class: d.string(), Region: d.string()}
		if got := b.label(l); d.err == nil && uint64(got) != i {
			return nil, fmt.Errorf("label triple %d listed twice", i)
		}
	}
	n := d.uvarint()
	if d.err == nil && n > 1<<28 {
		return nil, fmt.Errorf("%d devices", n)
	}
	sb := b.startSnapshotKeepLabels(int(n))
	for i := uint64(0); i < n && d.err == nil; i++ {
		id := d.string()
		var sf [2]byte
		d.full(sf[:])
		c := Change{ID: id, State: State(sf[0])}
		li := d.uvarint()
		if sf[1]&flagToken != 0 {
			d.full(c.Token[:])
			c.HasToken = true
		}
		if sf[1]&flagPrev != 0 {
			d.full(c.PrevToken[:])
			c.PrevUntil = d.varint()
		}
		if d.err != nil {
			break
		}
		if err := telemetry.ValidateDeviceID(id); err != nil {
			return nil, fmt.Errorf("device %d: %v", i, err)
		}
		if c.State > StateUnknown || li >= nl || sf[1]&^(flagToken|flagPrev) != 0 {
			return nil, fmt.Errorf("device %d %q: state %d, flags %d, label %d of %d", i, id, sf[0], sf[1], li, nl)
		}
		if _, dup := sb.base[id]; dup {
			return nil, fmt.Errorf("device %q listed twice", id)
		}
		sb.addLabel(c, uint32(li))
	}
	if d.err != nil {
		return nil, d.err
	}
	if _, err := rd.ReadByte(); err != io.EOF {
		return nil, errors.New("data after the last device")
	}
	return sb.finish(meta.Feed, meta.Version), nil
}

type decoder struct {
	r       *bufio.Reader
	err     error
	scratch [maxCacheString]byte
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, err := binary.ReadUvarint(d.r)
	d.err = eof(err)
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, err := binary.ReadVarint(d.r)
	d.err = eof(err)
	return v
}

func (d *decoder) full(b []byte) {
	if d.err != nil {
		return
	}
	_, err := io.ReadFull(d.r, b)
	d.err = eof(err)
}

func (d *decoder) string() string {
	n := d.uvarint()
	if d.err != nil {
		return ""
	}
	if n > maxCacheString {
		d.err = fmt.Errorf("a string of %d bytes", n)
		return ""
	}
	b := d.scratch[:n]
	d.full(b)
	return string(b)
}

// eof turns a clean end inside a record into an error that says so.
func eof(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

func errorsIsNotExist(err error) bool { return errors.Is(err, fs.ErrNotExist) }

// renameAside moves a damaged cache out of the way (over an older damaged
// one), for a post-mortem; the next write makes a new cache.
func renameAside(path, aside string) error { return os.Rename(path, aside) }
