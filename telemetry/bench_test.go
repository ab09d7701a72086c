package telemetry

import (
	"strconv"
	"testing"
)

func BenchmarkDecodeUplink(b *testing.B) {
	lim := DefaultLimits()
	for _, enc := range []struct {
		name string
		text bool
	}{{"binary", false}, {"json", true}} {
		for _, n := range []int{1, 50} {
			data := mustEncode(b, typicalFrame(n, 1_000_000, testNow), enc.text)
			b.Run(enc.name+"/readings="+strconv.Itoa(n), func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(data)))
				for b.Loop() {
					if _, err := DecodeUplink(data, enc.text, testNow, lim); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/reading")
			})
		}
	}
}

func BenchmarkEncodeUplink(b *testing.B) {
	for _, enc := range []struct {
		name string
		text bool
	}{{"binary", false}, {"json", true}} {
		for _, n := range []int{1, 50} {
			u := typicalFrame(n, 1_000_000, testNow)
			b.Run(enc.name+"/readings="+strconv.Itoa(n), func(b *testing.B) {
				b.ReportAllocs()
				var buf []byte
				for b.Loop() {
					var err error
					if buf, err = AppendUplink(buf[:0], u, enc.text); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
