package queue

import (
	"bytes"
	"encoding/binary"
	"encoding/gob"
	"errors"
	"fmt"
	"hash/crc32"
)

const (
	trailerLen = 24
	recMagic   = 0x31767264 // "drv1" little endian
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errBadRecord means a record failed its framing or checksum checks.
var errBadRecord = errors.New("bad record")

// record is the gob-encodable dque item. Its encoding is raw itself: gob then
// writes a short type header followed by raw, so the reader can take raw from
// the end of the item body without decoding gob.
type record struct {
	raw []byte
}

// GobEncode implements gob.GobEncoder.
func (r *record) GobEncode() ([]byte, error) { return r.raw, nil }

// GobDecode implements gob.GobDecoder. dque decodes every item of a segment
// it loads and hands the object back on Dequeue, where we ignore it: keep
// nothing, so a loaded segment costs dque no memory. Open has verified every
// record before dque sees it.
func (r *record) GobDecode([]byte) error { return nil }

func newRecordObject() interface{} { return &record{} }

// gobItem encodes raw as dque does: a gob message from a fresh encoder.
func gobItem(raw []byte) ([]byte, error) {
	var buf bytes.Buffer
	if err := gob.NewEncoder(&buf).Encode(&record{raw: raw}); err != nil {
		return nil, fmt.Errorf("gob encode record: %w", err)
	}
	return buf.Bytes(), nil
}

// framedLen is the space one entry takes inside a record.
func framedLen(n int) int { return uvarintLen(uint64(n)) + n }

func uvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}

// encodeRecord builds the raw form of a record holding entries, the first of
// which has sequence seq.
func encodeRecord(seq uint64, entries [][]byte) []byte {
	size := trailerLen
	for _, e := range entries {
		size += framedLen(len(e))
	}
	raw := make([]byte, 0, size)
	for _, e := range entries {
		raw = binary.AppendUvarint(raw, uint64(len(e)))
		raw = append(raw, e...)
	}
	dataLen := len(raw)
	raw = binary.LittleEndian.AppendUint64(raw, seq)
	raw = binary.LittleEndian.AppendUint32(raw, uint32(len(entries)))
	raw = binary.LittleEndian.AppendUint32(raw, uint32(dataLen))
	crc := crc32.Checksum(raw, castagnoli)
	raw = binary.LittleEndian.AppendUint32(raw, crc)
	raw = binary.LittleEndian.AppendUint32(raw, recMagic)
	return raw
}

// rawRec is a verified record: its sequence, entry count and entries part.
type rawRec struct {
	seq  uint64
	n    int
	data []byte // framed entries
}

// parseRaw verifies a raw record (trailer, bounds, CRC).
func parseRaw(raw []byte) (rawRec, error) {
	if len(raw) < trailerLen {
		return rawRec{}, fmt.Errorf("%w: %d bytes, shorter than its trailer", errBadRecord, len(raw))
	}
	t := raw[len(raw)-trailerLen:]
	if binary.LittleEndian.Uint32(t[20:]) != recMagic {
		return rawRec{}, fmt.Errorf("%w: no magic", errBadRecord)
	}
	dataLen := int(binary.LittleEndian.Uint32(t[12:]))
	if dataLen != len(raw)-trailerLen {
		return rawRec{}, fmt.Errorf("%w: data length %d, have %d", errBadRecord, dataLen, len(raw)-trailerLen)
	}
	if crc32.Checksum(raw[:len(raw)-8], castagnoli) != binary.LittleEndian.Uint32(t[16:]) {
		return rawRec{}, fmt.Errorf("%w: checksum mismatch", errBadRecord)
	}
	return rawRec{
		seq:  binary.LittleEndian.Uint64(t[0:]),
		n:    int(binary.LittleEndian.Uint32(t[8:])),
		data: raw[:dataLen],
	}, nil
}

// parseItem verifies a dque item body (a gob message) and returns the record
// inside. The raw record is the tail of the body: its trailer says how long.
func parseItem(body []byte) (rawRec, error) {
	if len(body) < trailerLen {
		return rawRec{}, fmt.Errorf("%w: item of %d bytes", errBadRecord, len(body))
	}
	t := body[len(body)-trailerLen:]
	dataLen := int(binary.LittleEndian.Uint32(t[12:]))
	start := len(body) - trailerLen - dataLen
	if binary.LittleEndian.Uint32(t[20:]) != recMagic || dataLen < 0 || start < 0 {
		return rawRec{}, fmt.Errorf("%w: no trailer", errBadRecord)
	}
	return parseRaw(body[start:])
}

// entries splits a record's entries part; it checks the framing against n.
func (r rawRec) entries() ([][]byte, error) {
	out := make([][]byte, 0, r.n)
	d := r.data
	for len(d) > 0 {
		l, k := binary.Uvarint(d)
		if k <= 0 || uint64(len(d)-k) < l {
			return nil, fmt.Errorf("%w: entry %d framing", errBadRecord, len(out))
		}
		out = append(out, d[k:k+int(l)])
		d = d[k+int(l):]
	}
	if len(out) != r.n {
		return nil, fmt.Errorf("%w: %d entries, trailer says %d", errBadRecord, len(out), r.n)
	}
	return out, nil
}

// payloadBytes is what the record counts against Options.MaxBytes.
func (r rawRec) payloadBytes() int64 { return int64(len(r.data)) }
