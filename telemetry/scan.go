package telemetry

import (
	"math"
	"time"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"
)

// ReadingRef is one reading of a frame in its wire encoding: the fields the frontend needs to
// decide what to store, and the bytes it stores, without a decoded Reading.
type ReadingRef struct {
	Seq    uint64
	TimeMs int64
	// Raw is the reading's protobuf encoding: for ScanUplink a slice of the frame (valid as long
	// as the frame's buffer is), for AppendReadingRefs a fresh encoding.
	Raw []byte
}

// ScanUplink is DecodeUplink's fast path for the frames devices send all day: binary, readings
// only. It applies the same rules to the wire bytes, decoding no message and allocating nothing
// (beyond growing dst), and appends the frame's readings to dst.
//
// ok is true only when DecodeUplink would accept the frame with readings of the same seq, time
// and content (Raw decodes to the Reading DecodeUplink returns). ok false means "not sure", never
// "refused": the frame has command reports, a field or an encoding the scanner leaves to protobuf
// (a map entry with unknown fields, say), or breaks a rule; the caller then calls DecodeUplink,
// whose verdict and error are the reference. So a refusal's reason is DecodeUplink's, written once.
func ScanUplink(data []byte, now time.Time, lim Limits, dst []ReadingRef) (_ []ReadingRef, ok bool) {
	lim = lim.withDefaults()
	if len(data) > lim.MaxFrameBytes {
		return dst, false
	}
	nowMs := now.UnixMilli()
	base := len(dst)
	var prev uint64
	for b := data; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || num != 1 || typ != protowire.BytesType {
			return dst[:base], false // reports, unknown fields, or malformed: DecodeUplink says
		}
		b = b[n:]
		raw, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return dst[:base], false
		}
		b = b[n:]
		i := len(dst) - base
		if i >= lim.MaxReadingsPerFrame {
			return dst[:base], false
		}
		v, ok := scanReading(raw, lim)
		if !ok || v.check(i, nowMs, lim) != nil || (i > 0 && v.seq <= prev) {
			return dst[:base], false
		}
		prev = v.seq
		dst = append(dst, ReadingRef{Seq: v.seq, TimeMs: v.timeMs, Raw: raw[:len(raw):len(raw)]})
	}
	if len(dst) == base {
		return dst, false // empty frame
	}
	return dst, true
}

// scanReading reads a Reading's fields as protobuf-go would decode them (the last occurrence of
// a field wins) and checks its extra entries. ok false: an unknown field, a wrong wire type, a
// malformed value, an extra entry that breaks a rule or that the scanner leaves to protobuf.
func scanReading(b []byte, lim Limits) (v readingValues, ok bool) {
	extras := 0
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return v, false
		}
		b = b[n:]
		switch {
		case typ == protowire.VarintType && num <= 9 && num != 5 && num != 6 && num != 7:
			x, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return v, false
			}
			b = b[n:]
			switch num {
			case 1:
				v.seq = x
			case 2:
				v.timeMs = int64(x)
			case 3:
				v.lat, v.hasLat = int32(protowire.DecodeZigZag(x&math.MaxUint32)), true
			case 4:
				v.lon, v.hasLon = int32(protowire.DecodeZigZag(x&math.MaxUint32)), true
			case 8:
				v.sats, v.hasSats = uint32(x), true
			case 9: // ignition: any value is a bool
			}
		case typ == protowire.Fixed32Type:
			k := floatIndex(num)
			if k < 0 {
				return v, false
			}
			x, n := protowire.ConsumeFixed32(b)
			if n < 0 {
				return v, false
			}
			b = b[n:]
			v.floats[k], v.hasFloat = math.Float32frombits(x), v.hasFloat|1<<k
		case typ == protowire.Fixed64Type && num == 13:
			x, n := protowire.ConsumeFixed64(b)
			if n < 0 {
				return v, false
			}
			b = b[n:]
			v.odometer, v.hasOdometer = math.Float64frombits(x), true
		case typ == protowire.BytesType && num == 17:
			e, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return v, false
			}
			b = b[n:]
			// Each entry checked alone: the decoded map has at most as many entries (a repeated
			// key keeps its last value, itself checked), so it passes when every entry does.
			if extras++; extras > lim.MaxExtra || !scanExtraEntry(e, lim) {
				return v, false
			}
		default:
			return v, false
		}
	}
	return v, true
}

// floatIndex returns the index in floatRules of the float32 field num, -1 if num is not one.
func floatIndex(num protowire.Number) int {
	if num < 0 || int(num) >= len(floatByNum) {
		return -1
	}
	return int(floatByNum[num])
}

// floatByNum maps a field number to its index in floatRules, -1 where none.
var floatByNum = func() (t [18]int8) {
	for i := range t {
		t[i] = -1
	}
	for k, r := range floatRules {
		t[r.num] = int8(k)
	}
	return t
}()

// scanExtraEntry checks one map entry of extra: key (1) and value (2), nothing else.
func scanExtraEntry(b []byte, lim Limits) bool {
	var key []byte
	var val float64
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.BytesType:
			key, n = protowire.ConsumeBytes(b)
		case num == 2 && typ == protowire.Fixed64Type:
			var x uint64
			x, n = protowire.ConsumeFixed64(b)
			val = math.Float64frombits(x)
		default:
			return false
		}
		if n < 0 {
			return false
		}
		b = b[n:]
	}
	// The key as a string without a copy: checkExtraEntry only reads it, and keeps it only in
	// the error it returns, which the fast path drops.
	k := unsafe.String(unsafe.SliceData(key), len(key))
	return checkExtraEntry(k, val, 0, lim) == nil
}

// AppendReadingRefs appends a ReadingRef for each reading, encoding it: the slow path's
// equivalent of ScanUplink's output, for JSON frames and frames the scanner left to DecodeUplink.
func AppendReadingRefs(dst []ReadingRef, readings []*Reading) ([]ReadingRef, error) {
	for _, r := range readings {
		raw, err := binMarshal.Marshal(r)
		if err != nil {
			return dst, err
		}
		dst = append(dst, ReadingRef{Seq: r.GetSeq(), TimeMs: r.GetTimeMs(), Raw: raw})
	}
	return dst, nil
}

// Field numbers of Record and Batch in telemetry.proto (TestWireFieldNumbers checks them against
// the descriptors: package variables cannot read those, registered in the generated init).
const (
	recordDeviceID   protowire.Number = 1
	recordReceivedMs protowire.Number = 2
	recordReading    protowire.Number = 3
	batchRecords     protowire.Number = 3
)

// RecordsSize is the length AppendRecords adds.
func RecordsSize(deviceID string, receivedMs int64, readings []ReadingRef) int {
	n := 0
	for _, r := range readings {
		n += protowire.SizeTag(batchRecords) + protowire.SizeBytes(recordSize(deviceID, receivedMs, len(r.Raw)))
	}
	return n
}

func recordSize(deviceID string, receivedMs int64, rawLen int) int {
	n := 0
	if deviceID != "" {
		n += protowire.SizeTag(recordDeviceID) + protowire.SizeBytes(len(deviceID))
	}
	if receivedMs != 0 {
		n += protowire.SizeTag(recordReceivedMs) + protowire.SizeVarint(uint64(receivedMs))
	}
	return n + protowire.SizeTag(recordReading) + protowire.SizeBytes(rawLen)
}

// AppendRecords appends to dst the encoding of a Batch holding, for each reading, a
// Record{DeviceId, ReceivedMs, Reading}: byte for byte what proto.Marshal writes for that Batch
// when each Raw is the reading's own proto.Marshal output, built without decoding a reading.
func AppendRecords(dst []byte, deviceID string, receivedMs int64, readings []ReadingRef) []byte {
	for _, r := range readings {
		dst = protowire.AppendTag(dst, batchRecords, protowire.BytesType)
		dst = protowire.AppendVarint(dst, uint64(recordSize(deviceID, receivedMs, len(r.Raw))))
		if deviceID != "" {
			dst = protowire.AppendTag(dst, recordDeviceID, protowire.BytesType)
			dst = protowire.AppendString(dst, deviceID)
		}
		if receivedMs != 0 {
			dst = protowire.AppendTag(dst, recordReceivedMs, protowire.VarintType)
			dst = protowire.AppendVarint(dst, uint64(receivedMs))
		}
		dst = protowire.AppendTag(dst, recordReading, protowire.BytesType)
		dst = protowire.AppendBytes(dst, r.Raw)
	}
	return dst
}
