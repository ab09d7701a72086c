package telemetry

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
)

// Field numbers of Batch, Enrichment, EnrichedRecord and PublishBatch in telemetry.proto
// (checked against the descriptors by TestWireFieldNumbers).
const (
	batchSender        protowire.Number = 1
	batchSeq           protowire.Number = 2
	batchLastSeq       protowire.Number = 4
	enrichmentFleet    protowire.Number = 1
	enrichmentClass    protowire.Number = 2
	enrichmentRegion   protowire.Number = 3
	enrichedRecord     protowire.Number = 1
	enrichedEnrichment protowire.Number = 2
	publishRouter      protowire.Number = 1
	publishSeq         protowire.Number = 2
	publishRecords     protowire.Number = 3
)

// ErrMalformedBatch is returned by WalkBatchRecords for bytes that are not a Batch.
var ErrMalformedBatch = errors.New("telemetry: malformed Batch")

// WalkBatchRecords calls fn with each Record of an encoded Batch, in order: the record's
// encoding and its device_id (a slice of it; empty if unset; the last occurrence wins, as in
// protobuf). It checks the wire structure of the Batch and of each Record, decoding no Reading:
// what a router needs to enrich and republish records without decoding them. Fields it does not
// use (sender, seq, last_seq, unknown ones) are skipped.
func WalkBatchRecords(b []byte, fn func(record, deviceID []byte)) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("%w: field tag: %w", ErrMalformedBatch, protowire.ParseError(n))
		}
		b = b[n:]
		if num != batchRecords || typ != protowire.BytesType {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return fmt.Errorf("%w: field %d: %w", ErrMalformedBatch, num, protowire.ParseError(n))
			}
			b = b[n:]
			continue
		}
		rec, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return fmt.Errorf("%w: record: %w", ErrMalformedBatch, protowire.ParseError(n))
		}
		b = b[n:]
		var dev []byte
		for r := rec; len(r) > 0; {
			num, typ, n := protowire.ConsumeTag(r)
			if n < 0 {
				return fmt.Errorf("%w: record field tag: %w", ErrMalformedBatch, protowire.ParseError(n))
			}
			r = r[n:]
			if num == recordDeviceID && typ == protowire.BytesType {
				dev, n = protowire.ConsumeBytes(r)
			} else {
				n = protowire.ConsumeFieldValue(num, typ, r)
			}
			if n < 0 {
				return fmt.Errorf("%w: record field %d: %w", ErrMalformedBatch, num, protowire.ParseError(n))
			}
			r = r[n:]
		}
		fn(rec, dev)
	}
	return nil
}

// AppendEnrichment appends the encoding of Enrichment{Fleet, VehicleClass, Region}.
func AppendEnrichment(dst []byte, fleet, class, region string) []byte {
	for _, f := range [...]struct {
		num protowire.Number
		v   string
	}{{enrichmentFleet, fleet}, {enrichmentClass, class}, {enrichmentRegion, region}} {
		if f.v != "" {
			dst = protowire.AppendTag(dst, f.num, protowire.BytesType)
			dst = protowire.AppendString(dst, f.v)
		}
	}
	return dst
}

// RawEnriched is one EnrichedRecord by its parts' encodings: the Record as stored, and its
// Enrichment (none when HasEnrichment is false; an empty one when it is true and Enrichment is
// empty).
type RawEnriched struct {
	Record        []byte
	Enrichment    []byte
	HasEnrichment bool
}

func (r *RawEnriched) size() int {
	n := protowire.SizeTag(enrichedRecord) + protowire.SizeBytes(len(r.Record))
	if r.HasEnrichment {
		n += protowire.SizeTag(enrichedEnrichment) + protowire.SizeBytes(len(r.Enrichment))
	}
	return n
}

// PublishBatchSize is the length AppendPublishBatch adds.
func PublishBatchSize(router string, seq uint64, recs []RawEnriched) int {
	n := 0
	if router != "" {
		n += protowire.SizeTag(publishRouter) + protowire.SizeBytes(len(router))
	}
	if seq != 0 {
		n += protowire.SizeTag(publishSeq) + protowire.SizeVarint(seq)
	}
	for i := range recs {
		n += protowire.SizeTag(publishRecords) + protowire.SizeBytes(recs[i].size())
	}
	return n
}

// AppendPublishBatch appends the encoding of PublishBatch{Router, Seq, Records}: byte for byte
// what proto.Marshal writes for it when each part is proto.Marshal's own encoding, with no
// record decoded.
func AppendPublishBatch(dst []byte, router string, seq uint64, recs []RawEnriched) []byte {
	if router != "" {
		dst = protowire.AppendTag(dst, publishRouter, protowire.BytesType)
		dst = protowire.AppendString(dst, router)
	}
	if seq != 0 {
		dst = protowire.AppendTag(dst, publishSeq, protowire.VarintType)
		dst = protowire.AppendVarint(dst, seq)
	}
	for i := range recs {
		r := &recs[i]
		dst = protowire.AppendTag(dst, publishRecords, protowire.BytesType)
		dst = protowire.AppendVarint(dst, uint64(r.size()))
		dst = protowire.AppendTag(dst, enrichedRecord, protowire.BytesType)
		dst = protowire.AppendBytes(dst, r.Record)
		if r.HasEnrichment {
			dst = protowire.AppendTag(dst, enrichedEnrichment, protowire.BytesType)
			dst = protowire.AppendBytes(dst, r.Enrichment)
		}
	}
	return dst
}

// Field numbers of Downlink's ack and of Ack (checked by TestWireFieldNumbers).
const (
	downlinkAck protowire.Number = 1
	ackSeq      protowire.Number = 1
)

// AppendAck appends the binary encoding of the Downlink NewAck(seq): what EncodeDownlink writes
// for it, without the two messages and the marshal a frontend would otherwise pay per frame.
func AppendAck(dst []byte, seq uint64) []byte {
	dst = protowire.AppendTag(dst, downlinkAck, protowire.BytesType)
	if seq == 0 {
		return protowire.AppendVarint(dst, 0)
	}
	dst = protowire.AppendVarint(dst, uint64(protowire.SizeTag(ackSeq)+protowire.SizeVarint(seq)))
	dst = protowire.AppendTag(dst, ackSeq, protowire.VarintType)
	return protowire.AppendVarint(dst, seq)
}

// ParseAck returns the seq of a binary Downlink that is exactly one Ack as AppendAck writes it,
// without decoding messages: a device reads one per frame it sends. ok false: anything else
// (another kind, unknown fields, trailing bytes, malformed), which DecodeDownlink judges.
func ParseAck(b []byte) (seq uint64, ok bool) {
	num, typ, n := protowire.ConsumeTag(b)
	if n < 0 || num != downlinkAck || typ != protowire.BytesType {
		return 0, false
	}
	ack, m := protowire.ConsumeBytes(b[n:])
	if m < 0 || n+m != len(b) {
		return 0, false
	}
	if len(ack) == 0 {
		return 0, true // Ack{seq: 0}
	}
	num, typ, n = protowire.ConsumeTag(ack)
	if n < 0 || num != ackSeq || typ != protowire.VarintType {
		return 0, false
	}
	seq, m = protowire.ConsumeVarint(ack[n:])
	if m < 0 || n+m != len(ack) {
		return 0, false
	}
	return seq, true
}
