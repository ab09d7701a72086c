package forward

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/drover-telemetry/drover/internal/daemon"
	"github.com/drover-telemetry/drover/telemetry"
)

// Version is the protocol version this package writes: the first byte of
// every message's header frame. See doc.go for the rules of its evolution.
const Version = 1

// Type is the kind of a message: the second byte of its header frame.
type Type uint8

// Message types. A receiver ignores a type it does not know (and counts it),
// so that new types can be added without a new Version.
const (
	// TypeBatch (frontend → router) carries entries First..Last of Sender's
	// queue, one frame each.
	TypeBatch Type = 1
	// TypeAck (router → frontend): entries First..Last of the batch that
	// named them are durable at the router.
	TypeAck Type = 2
	// TypeBusy (router → frontend): nothing of batch First..Last is promised
	// (the router's queue or disk is full); resend later, with backoff.
	TypeBusy Type = 3
	// TypeReject (router → frontend): batch First..Last was refused as
	// malformed or too large, for Reason; resending it unchanged fails again.
	TypeReject Type = 4
	// TypePing (frontend → router) asks for a TypePong echoing Nonce.
	TypePing Type = 5
	// TypePong (router → frontend) answers a ping: it echoes Nonce, and names
	// the router (Router) and its process incarnation (Incarnation, random
	// per start), so that a frontend notices a restart.
	TypePong Type = 6
	// TypeSubscribe (storage writer → router, store lane) names a durable
	// subscriber (Name) and asks for a TypePong echoing Nonce. It is sent on
	// connect and then every heartbeat; the router registers an unknown Name.
	TypeSubscribe Type = 7
	// TypePackedBatch is TypeBatch with every entry in one frame (each
	// prefixed with its uvarint length): zmq4 reads each frame with its own
	// read(2) calls, so one frame instead of n saves the receiver most of
	// its reads. Decode returns it as a TypeBatch with Packed set.
	TypePackedBatch Type = 8
)

// String returns the type's name, for logs and metric labels.
func (t Type) String() string {
	switch t {
	case TypeBatch:
		return "batch"
	case TypeAck:
		return "ack"
	case TypeBusy:
		return "busy"
	case TypeReject:
		return "reject"
	case TypePing:
		return "ping"
	case TypePong:
		return "pong"
	case TypeSubscribe:
		return "subscribe"
	case TypePackedBatch:
		return "packed-batch"
	}
	return fmt.Sprintf("type-%d", uint8(t))
}

// Limits of the protocol.
const (
	// MaxReasonLen is the longest Reason carried; longer ones are cut.
	MaxReasonLen = 256
	// MaxEntries is the most entries one batch may carry.
	MaxEntries = 1 << 16
)

// Errors of Decode. Test with errors.Is.
var (
	// ErrVersion: the header names a protocol version this package does not
	// speak. The message cannot be answered; it is dropped and counted.
	ErrVersion = errors.New("unknown protocol version")
	// ErrUnknownType: a known version but a message type this package does
	// not know (a newer peer); ignore it.
	ErrUnknownType = errors.New("unknown message type")
	// ErrMalformed: the message breaks the protocol.
	ErrMalformed = errors.New("malformed message")
)

// Message is one protocol message, decoded. Which fields are meaningful
// depends on Type; see the Type constants.
type Message struct {
	Type Type
	// Sender is the frontend's stable name (TypeBatch).
	Sender string
	// First and Last are queue sequences of the sender, First <= Last
	// (TypeBatch, TypeAck, TypeBusy, TypeReject).
	First, Last uint64
	// Entries are the sender's queue entries First..Last, in order
	// (TypeBatch): Entries[i] has sequence First+i.
	Entries [][]byte
	// Reason says why, for logs (TypeBusy, TypeReject).
	Reason string
	// Nonce is echoed from ping to pong.
	Nonce uint64
	// Incarnation is random per router start (TypePong).
	Incarnation uint64
	// Router is the router's ID (TypePong).
	Router string
	// Name is the durable subscriber's stable name (TypeSubscribe); see
	// [ValidateSubscriberName].
	Name string
	// Packed (TypeBatch): Frames encodes the batch as a TypePackedBatch,
	// all entries in one frame; Decode sets it for a packed batch.
	Packed bool
}

const (
	hdrBase  = 2     // version, type
	hdrRange = 16    // first, last
	hdrPong  = 8 + 8 // nonce, incarnation
	hdrPing  = 8     // nonce
	maxIDLen = 253   // daemon.ValidateID
)

// Frames encodes m as the frames of one multipart ZeroMQ message. The entry
// frames of a batch alias m.Entries.
func (m Message) Frames() ([][]byte, error) {
	h := []byte{Version, byte(m.Type)}
	switch m.Type {
	case TypeBatch:
		if err := checkRange(m.First, m.Last); err != nil {
			return nil, err
		}
		if n := uint64(len(m.Entries)); n == 0 || n > MaxEntries || m.Last-m.First+1 != n {
			return nil, fmt.Errorf("%w: batch %d..%d with %d entries", ErrMalformed, m.First, m.Last, len(m.Entries))
		}
		if err := daemon.ValidateID(m.Sender); err != nil {
			return nil, fmt.Errorf("%w: sender: %w", ErrMalformed, err)
		}
		if m.Packed {
			return packedBatchFrames(m.Sender, m.First, m.Last, m.Entries), nil
		}
		return batchFrames(m.Sender, m.First, m.Last, m.Entries), nil
	case TypeAck, TypeBusy, TypeReject:
		if err := checkRange(m.First, m.Last); err != nil {
			return nil, err
		}
		h = binary.BigEndian.AppendUint64(h, m.First)
		h = binary.BigEndian.AppendUint64(h, m.Last)
		if m.Type != TypeAck {
			h = append(h, cutReason(m.Reason)...)
		}
	case TypePing:
		h = binary.BigEndian.AppendUint64(h, m.Nonce)
	case TypeSubscribe:
		if err := ValidateSubscriberName(m.Name); err != nil {
			return nil, fmt.Errorf("%w: subscriber: %w", ErrMalformed, err)
		}
		h = binary.BigEndian.AppendUint64(h, m.Nonce)
		h = append(h, m.Name...)
	case TypePong:
		if err := daemon.ValidateID(m.Router); err != nil {
			return nil, fmt.Errorf("%w: router: %w", ErrMalformed, err)
		}
		h = binary.BigEndian.AppendUint64(h, m.Nonce)
		h = binary.BigEndian.AppendUint64(h, m.Incarnation)
		h = append(h, m.Router...)
	default:
		return nil, fmt.Errorf("%w: %d", ErrUnknownType, m.Type)
	}
	return [][]byte{h}, nil
}

// batchFrames encodes a batch whose fields the caller has checked.
func batchFrames(sender string, first, last uint64, entries [][]byte) [][]byte {
	h := make([]byte, 0, hdrBase+hdrRange+len(sender))
	h = append(h, Version, byte(TypeBatch))
	h = binary.BigEndian.AppendUint64(h, first)
	h = binary.BigEndian.AppendUint64(h, last)
	h = append(h, sender...)
	frames := make([][]byte, 0, 1+len(entries))
	frames = append(frames, h)
	return append(frames, entries...)
}

// packedBatchFrames encodes a packed batch whose fields the caller has
// checked: the batch header (with type TypePackedBatch) and one frame of
// entries, each a uvarint length followed by its bytes.
func packedBatchFrames(sender string, first, last uint64, entries [][]byte) [][]byte {
	h := make([]byte, 0, hdrBase+hdrRange+len(sender))
	h = append(h, Version, byte(TypePackedBatch))
	h = binary.BigEndian.AppendUint64(h, first)
	h = binary.BigEndian.AppendUint64(h, last)
	h = append(h, sender...)
	n := 0
	for _, e := range entries {
		n += binary.MaxVarintLen64 + len(e)
	}
	body := make([]byte, 0, n)
	for _, e := range entries {
		body = binary.AppendUvarint(body, uint64(len(e)))
		body = append(body, e...)
	}
	return [][]byte{h, body}
}

// unpack splits a packed batch's entry frame; the entries alias it.
func unpack(b []byte) ([][]byte, error) {
	var out [][]byte
	for len(b) > 0 {
		if len(out) == MaxEntries {
			return nil, fmt.Errorf("%w: packed batch of more than %d entries", ErrMalformed, MaxEntries)
		}
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return nil, fmt.Errorf("%w: packed entry %d: bad length", ErrMalformed, len(out))
		}
		out = append(out, b[k:k+int(n):k+int(n)])
		b = b[k+int(n):]
	}
	return out, nil
}

// Decode parses the frames of one message. The entries of a batch alias
// frames. On ErrUnknownType the returned message has its Type set.
func Decode(frames [][]byte) (Message, error) {
	var m Message
	if len(frames) == 0 || len(frames[0]) < hdrBase {
		return m, fmt.Errorf("%w: no header", ErrMalformed)
	}
	h := frames[0]
	if h[0] != Version {
		return m, fmt.Errorf("%w: %d (this end speaks %d)", ErrVersion, h[0], Version)
	}
	m.Type = Type(h[1])
	body := h[hdrBase:]
	if m.Type == TypePackedBatch {
		if len(frames) != 2 {
			m.Type = TypeBatch
			return m, fmt.Errorf("%w: packed batch with %d frames", ErrMalformed, len(frames))
		}
		ents, err := unpack(frames[1])
		m.Type, m.Packed = TypeBatch, true
		if err != nil {
			if len(body) >= hdrRange {
				m.First, m.Last = binary.BigEndian.Uint64(body), binary.BigEndian.Uint64(body[8:])
			}
			return m, err
		}
		frames = append([][]byte{h}, ents...)
	}
	if m.Type != TypeBatch && len(frames) != 1 {
		return m, fmt.Errorf("%w: %s with %d frames", ErrMalformed, m.Type, len(frames))
	}
	switch m.Type {
	case TypeBatch:
		if len(body) < hdrRange+1 || len(body) > hdrRange+maxIDLen {
			return m, fmt.Errorf("%w: batch header of %d bytes", ErrMalformed, len(h))
		}
		m.First, m.Last = binary.BigEndian.Uint64(body), binary.BigEndian.Uint64(body[8:])
		m.Sender = string(body[hdrRange:])
		if err := checkRange(m.First, m.Last); err != nil {
			return m, err
		}
		if err := daemon.ValidateID(m.Sender); err != nil {
			return m, fmt.Errorf("%w: sender: %w", ErrMalformed, err)
		}
		m.Entries = frames[1:]
		if n := uint64(len(m.Entries)); n == 0 || n > MaxEntries || m.Last-m.First+1 != n {
			return m, fmt.Errorf("%w: batch %d..%d from %s with %d entries", ErrMalformed, m.First, m.Last, m.Sender, len(m.Entries))
		}
	case TypeAck, TypeBusy, TypeReject:
		if len(body) < hdrRange || (m.Type == TypeAck && len(body) != hdrRange) || len(body) > hdrRange+MaxReasonLen {
			return m, fmt.Errorf("%w: %s header of %d bytes", ErrMalformed, m.Type, len(h))
		}
		m.First, m.Last = binary.BigEndian.Uint64(body), binary.BigEndian.Uint64(body[8:])
		m.Reason = string(body[hdrRange:])
		if err := checkRange(m.First, m.Last); err != nil {
			return m, err
		}
	case TypePing:
		if len(body) != hdrPing {
			return m, fmt.Errorf("%w: ping header of %d bytes", ErrMalformed, len(h))
		}
		m.Nonce = binary.BigEndian.Uint64(body)
	case TypeSubscribe:
		if len(body) <= hdrPing || len(body) > hdrPing+MaxSubscriberNameLen {
			return m, fmt.Errorf("%w: subscribe header of %d bytes", ErrMalformed, len(h))
		}
		m.Nonce = binary.BigEndian.Uint64(body)
		m.Name = string(body[hdrPing:])
		if err := ValidateSubscriberName(m.Name); err != nil {
			return m, fmt.Errorf("%w: subscriber: %w", ErrMalformed, err)
		}
	case TypePong:
		if len(body) <= hdrPong || len(body) > hdrPong+maxIDLen {
			return m, fmt.Errorf("%w: pong header of %d bytes", ErrMalformed, len(h))
		}
		m.Nonce = binary.BigEndian.Uint64(body)
		m.Incarnation = binary.BigEndian.Uint64(body[8:])
		m.Router = string(body[hdrPong:])
	default:
		return m, fmt.Errorf("%w: %d", ErrUnknownType, m.Type)
	}
	return m, nil
}

// MaxSubscriberNameLen is the longest durable subscriber name.
const MaxSubscriberNameLen = 64

// ValidateSubscriberName checks a durable subscriber's name. Names become
// directory names at the router (QUEUE_DIR/subs/<name>) and metric labels,
// so they are short and plain: 1 to MaxSubscriberNameLen bytes of lowercase
// letters, digits, '_' and '-', starting with a letter or digit.
func ValidateSubscriberName(name string) error {
	if name == "" {
		return errors.New("empty subscriber name")
	}
	if len(name) > MaxSubscriberNameLen {
		return fmt.Errorf("subscriber name %q: longer than %d bytes", name, MaxSubscriberNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case (c == '_' || c == '-') && i > 0:
		default:
			return fmt.Errorf("subscriber name %q: character %q at %d not allowed (want a-z, 0-9, '_', '-', not first)", name, c, i)
		}
	}
	return nil
}

func checkRange(first, last uint64) error {
	if first == 0 || last < first {
		return fmt.Errorf("%w: sequence range %d..%d", ErrMalformed, first, last)
	}
	return nil
}

// cutReason keeps at most MaxReasonLen bytes of s without splitting a rune.
func cutReason(s string) string {
	if len(s) <= MaxReasonLen {
		return s
	}
	s = s[:MaxReasonLen]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

// Field numbers of telemetry.Batch, taken from its descriptor so that the
// byte-level helpers below cannot drift from the schema.
var (
	fieldSender  = batchField("sender")
	fieldSeq     = batchField("seq")
	fieldRecords = batchField("records")
	fieldLastSeq = batchField("last_seq")
)

func batchField(name string) protowire.Number {
	f := (&telemetry.Batch{}).ProtoReflect().Descriptor().Fields().ByName(protoreflect.Name(name))
	if f == nil {
		panic("forward: telemetry.Batch has no field " + name)
	}
	return f.Number()
}

// StoredSize is the length of the entry AppendStored writes.
func StoredSize(sender string, first, last uint64, entries [][]byte) int {
	n := trailerSize(sender, first, last)
	for _, e := range entries {
		n += len(e)
	}
	return n
}

func trailerSize(sender string, first, last uint64) int {
	return protowire.SizeTag(fieldSender) + protowire.SizeBytes(len(sender)) +
		protowire.SizeTag(fieldSeq) + protowire.SizeVarint(first) +
		protowire.SizeTag(fieldLastSeq) + protowire.SizeVarint(last)
}

// AppendStored appends to dst a router queue entry: the sender's entries
// first..last (each a serialized telemetry.Batch holding only records),
// concatenated, followed by a serialized telemetry.Batch{Sender, Seq: first,
// LastSeq: last}. Protobuf merges concatenated messages, so the entry
// decodes as one Batch with every record and the three header fields,
// without any record being decoded here.
func AppendStored(dst []byte, sender string, first, last uint64, entries [][]byte) []byte {
	for _, e := range entries {
		dst = append(dst, e...)
	}
	dst = protowire.AppendTag(dst, fieldSender, protowire.BytesType)
	dst = protowire.AppendString(dst, sender)
	dst = protowire.AppendTag(dst, fieldSeq, protowire.VarintType)
	dst = protowire.AppendVarint(dst, first)
	dst = protowire.AppendTag(dst, fieldLastSeq, protowire.VarintType)
	dst = protowire.AppendVarint(dst, last)
	return dst
}

// StoredInfo is what ParseStored reads from a router queue entry.
type StoredInfo struct {
	Sender      string
	First, Last uint64
	Records     int
}

// ParseStored reads the sender, the sequence range and the number of records
// of a router queue entry (see AppendStored) by walking its top-level fields,
// without decoding any record. Like protobuf, the last value of a field wins.
func ParseStored(entry []byte) (StoredInfo, error) {
	var si StoredInfo
	err := walkBatch(entry, func(num protowire.Number, v []byte, x uint64) {
		switch num {
		case fieldSender:
			si.Sender = string(v)
		case fieldSeq:
			si.First = x
		case fieldLastSeq:
			si.Last = x
		case fieldRecords:
			si.Records++
		}
	})
	if err != nil {
		return si, err
	}
	if si.Sender == "" || si.First == 0 || si.Last < si.First {
		return si, fmt.Errorf("%w: stored batch with sender %q, range %d..%d", ErrMalformed, si.Sender, si.First, si.Last)
	}
	return si, nil
}

// CountRecords returns the number of records in a serialized
// telemetry.Batch, checking its top-level wire structure but decoding no
// record.
func CountRecords(b []byte) (int, error) {
	n := 0
	err := walkBatch(b, func(num protowire.Number, _ []byte, _ uint64) {
		if num == fieldRecords {
			n++
		}
	})
	return n, err
}

// walkBatch calls fn for each top-level field of a serialized Batch: v holds
// a bytes field's content, x a varint's value.
func walkBatch(b []byte, fn func(num protowire.Number, v []byte, x uint64)) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("%w: batch field tag: %w", ErrMalformed, protowire.ParseError(n))
		}
		b = b[n:]
		var v []byte
		var x uint64
		switch {
		case typ == protowire.BytesType && (num == fieldSender || num == fieldRecords):
			v, n = protowire.ConsumeBytes(b)
		case typ == protowire.VarintType && (num == fieldSeq || num == fieldLastSeq):
			x, n = protowire.ConsumeVarint(b)
		default:
			// A field this schema version does not know, or of the wrong
			// wire type: protobuf would keep it as unknown; so do we.
			n = protowire.ConsumeFieldValue(num, typ, b)
			num = 0
		}
		if n < 0 {
			return fmt.Errorf("%w: batch field %d: %w", ErrMalformed, num, protowire.ParseError(n))
		}
		b = b[n:]
		if num != 0 {
			fn(num, v, x)
		}
	}
	return nil
}
