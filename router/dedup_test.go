package router

import (
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/drover-telemetry/drover/internal/forward"
)

func iv(first, last uint64) forward.Interval { return forward.Interval{First: first, Last: last} }

func TestSubtract(t *testing.T) {
	for _, tc := range []struct {
		a, b, want []forward.Interval
	}{
		{[]forward.Interval{iv(1, 10)}, nil, []forward.Interval{iv(1, 10)}},
		{[]forward.Interval{iv(1, 10)}, []forward.Interval{iv(1, 10)}, nil},
		{[]forward.Interval{iv(1, 10)}, []forward.Interval{iv(3, 4), iv(8, 12)}, []forward.Interval{iv(1, 2), iv(5, 7)}},
		{[]forward.Interval{iv(1, 3), iv(7, 9)}, []forward.Interval{iv(2, 8)}, []forward.Interval{iv(1, 1), iv(9, 9)}},
		{[]forward.Interval{iv(5, 6)}, []forward.Interval{iv(1, 2), iv(9, 9)}, []forward.Interval{iv(5, 6)}},
		{[]forward.Interval{iv(1, 2), iv(4, 5)}, []forward.Interval{iv(0+2, 4)}, []forward.Interval{iv(1, 1), iv(5, 5)}},
	} {
		if got := subtract(tc.a, tc.b); !slices.Equal(got, tc.want) {
			t.Errorf("subtract(%v, %v) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}

// TestJournalTornTail: the journal is read up to its first damaged record,
// whatever the damage; what precedes it is kept.
func TestJournalTornTail(t *testing.T) {
	logger := slog.New(slog.DiscardHandler)
	m := newMetrics(nil)
	state := map[string][]forward.Interval{"fe-a": {iv(1, 10), iv(20, 30)}, "fe-b": {iv(5, 5)}}
	for name, damage := range map[string]func([]byte) []byte{
		"none":          func(b []byte) []byte { return b },
		"cut in length": func(b []byte) []byte { return append(b, 9, 0) },
		"cut in body":   func(b []byte) []byte { return append(b, 12, 0, 0, 0, 4, 'f') },
		"zeroes":        func(b []byte) []byte { return append(b, make([]byte, 64)...) },
		"bad crc": func(b []byte) []byte {
			r := appendJournalRecord(nil, "fe-a", iv(40, 41))
			r[len(r)-1] ^= 1
			return append(b, r...)
		},
		"absurd length":    func(b []byte) []byte { return append(b, 0xff, 0xff, 0xff, 0x7f, 1, 2, 3, 4) },
		"record then torn": func(b []byte) []byte { return append(appendJournalRecord(b, "fe-a", iv(11, 12)), 3) },
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			j, err := openJournal(dir, state, m, logger)
			if err != nil {
				t.Fatal(err)
			}
			j.write("fe-b", []forward.Interval{iv(6, 8)}, nil)
			if err := j.f.Close(); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, journalName)
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, damage(b), 0o644); err != nil {
				t.Fatal(err)
			}
			got, found, err := readJournal(dir, logger)
			if err != nil || !found {
				t.Fatalf("readJournal: %v, found %v", err, found)
			}
			want := map[string][]forward.Interval{"fe-a": {iv(1, 10), iv(20, 30)}, "fe-b": {iv(5, 5), iv(6, 8)}}
			if name == "record then torn" {
				want["fe-a"] = append(want["fe-a"], iv(11, 12))
			}
			for s, ivs := range want {
				if !slices.Equal(got[s], ivs) {
					t.Errorf("%s: read %v, want %v", s, got[s], ivs)
				}
			}
			// Open rewrites it compactly, and appends go on after that.
			j2, err := openJournal(dir, got, m, logger)
			if err != nil {
				t.Fatal(err)
			}
			defer j2.f.Close()
			again, _, _ := readJournal(dir, logger)
			for s := range want {
				if !slices.Equal(again[s], got[s]) {
					t.Errorf("after rewrite %s: %v, want %v", s, again[s], got[s])
				}
			}
		})
	}
}

// TestJournalCompacts: past compactAfter records the journal is rewritten
// with one record per interval.
func TestJournalCompacts(t *testing.T) {
	dir := t.TempDir()
	d := newDedup(4096, nil, newMetrics(nil), slog.New(slog.DiscardHandler))
	j, err := openJournal(dir, nil, d.m, d.log)
	if err != nil {
		t.Fatal(err)
	}
	d.j = j
	for i := range uint64(compactAfter + 10) {
		d.stored("fe", []forward.Interval{iv(i+1, i+1)}) // in order: one interval
	}
	if j.records > 20 {
		t.Errorf("%d journal records after compaction, want a handful", j.records)
	}
	if err := d.close(); err != nil {
		t.Fatal(err)
	}
	got, _, err := readJournal(dir, d.log)
	if err != nil {
		t.Fatal(err)
	}
	if want := []forward.Interval{iv(1, compactAfter+10)}; !slices.Equal(got["fe"], want) {
		t.Errorf("journal holds %v, want %v", got["fe"], want)
	}
}
