package registry

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/internal/apiclient"
	"github.com/drover-telemetry/drover/internal/auth"
)

// cacheFixture is a registry with every kind of entry: labels and none,
// each state, no token, a rotation in its overlap, an overlay over a base
// with a deletion.
func cacheFixture(t *testing.T) *Registry {
	t.Helper()
	b := newBuilder()
	s := b.startSnapshot(0)
	for i := range 500 {
		c := active(fmt.Sprintf("dev-%04d", i), fmt.Sprint("tok-", i), Labels{Fleet: fmt.Sprint("fleet-", i%3), Class: "truck", Region: "r"})
		c.State = State(i % 3)
		s.add(c)
	}
	s.add(Change{ID: "no-token", State: StateActive})
	s.finish("feed_abc", 40)
	rot := active("dev-0001", "new", Labels{Fleet: "moved"})
	rot.PrevToken, rot.PrevUntil = auth.Hash("tok-1"), time.Now().Add(time.Hour).UnixMilli()
	return b.apply([]Change{rot, {ID: "dev-0002", Deleted: true}, active("added", "tok-added", Labels{})}, 42, time.Now())
}

// sameRegistry fails unless a and b hold the same devices, labels, states
// and tokens (current and previous), feed and version.
func sameRegistry(t *testing.T, a, b *Registry) {
	t.Helper()
	if a.Len() != b.Len() || a.Version() != b.Version() || a.Feed() != b.Feed() {
		t.Fatalf("Len/Version/Feed %d/%d/%q vs %d/%d/%q", a.Len(), a.Version(), a.Feed(), b.Len(), b.Version(), b.Feed())
	}
	_ = a.each(func(id string, x rec, p *prevToken) error {
		y, ok := b.get(id)
		if !ok {
			t.Errorf("%s missing", id)
			return nil
		}
		if x.token != y.token || x.hasToken != y.hasToken || x.state != y.state || a.labels[x.labels] != b.labels[y.labels] {
			t.Errorf("%s: %+v vs %+v", id, x, y)
		}
		q, okq := b.prev[id]
		if (p != nil) != okq || (p != nil && *p != q) {
			t.Errorf("%s previous token: %v vs %v", id, p, q)
		}
		return nil
	})
}

// TestCacheRoundTrip: what is written reads back the same, and serves.
func TestCacheRoundTrip(t *testing.T) {
	r := cacheFixture(t)
	path := filepath.Join(t.TempDir(), "registry.cache")
	if err := writeRegistryCache(path, r, "http://127.0.0.1:8090"); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("cache mode %v, want 0600 (it holds token hashes)", st.Mode().Perm())
	}
	b := newBuilder()
	got, meta, err := readRegistryCache(path, b)
	if err != nil {
		t.Fatal(err)
	}
	sameRegistry(t, r, got)
	if meta.Source != "http://127.0.0.1:8090" || meta.Count != r.Len() || meta.Version != 42 || meta.Feed != "feed_abc" {
		t.Errorf("meta %+v", meta)
	}
	if _, _, err := got.Authorize("dev-0001", "tok-1", time.Now()); err != nil {
		t.Errorf("previous token from the cache: %v", err)
	}
	// The builder continues from the cached copy.
	if b.cur != got {
		t.Fatal("the builder does not hold the cached registry")
	}
	r2 := b.apply([]Change{active("later", "t", Labels{Fleet: "fleet-1"})}, 43, time.Now())
	if d, ok := r2.Lookup("later"); !ok || d.Fleet != "fleet-1" {
		t.Errorf("a change after the cache: %+v %v", d, ok)
	}
	if _, _, err := readRegistryCache(filepath.Join(t.TempDir(), "none"), newBuilder()); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing cache: %v", err)
	}
}

// TestCacheDamage is a damage table: a cache cut at any length, or with
// any one byte changed, is refused whole as damaged; the builder is left
// as it was (no half registry).
func TestCacheDamage(t *testing.T) {
	r := cacheFixture(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "registry.cache")
	if err := writeRegistryCache(path, r, "x"); err != nil {
		t.Fatal(err)
	}
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	damage := map[string]func([]byte) []byte{}
	for _, n := range []int{0, 1, 10, len(good) / 3, len(good) / 2, len(good) - 17, len(good) - 16, len(good) - 1} {
		damage[fmt.Sprintf("cut at %d", n)] = func(b []byte) []byte { return b[:n] }
	}
	for _, at := range []int{0, 5, 20, 60, len(good) / 4, len(good) / 2, len(good) - 20, len(good) - 10, len(good) - 3} {
		damage[fmt.Sprintf("byte %d flipped", at)] = func(b []byte) []byte { b[at] ^= 0x40; return b }
	}
	damage["appended"] = func(b []byte) []byte { return append(b, 0) }
	damage["zeroed tail"] = func(b []byte) []byte {
		for i := len(b) / 2; i < len(b); i++ {
			b[i] = 0
		}
		return b
	}
	for name, fn := range damage {
		bad := fn(append([]byte(nil), good...))
		p := filepath.Join(dir, "bad.cache")
		if err := os.WriteFile(p, bad, 0o600); err != nil {
			t.Fatal(err)
		}
		b := newBuilder()
		before := b.cur
		got, _, err := readRegistryCache(p, b)
		if err == nil || got != nil {
			t.Errorf("%s: accepted (%v devices)", name, got.Len())
			continue
		}
		if !apiclient.Damaged(err) {
			t.Errorf("%s: error %v is not ErrCacheDamaged", name, err)
		}
		if b.cur != before {
			t.Errorf("%s: the builder was changed", name)
		}
	}
	// Another kind, and a format this build does not read.
	for _, meta := range []apiclient.CacheMeta{{Kind: "live-tokens", Format: cacheFormat}, {Kind: cacheKind, Format: cacheFormat + 1}} {
		p := filepath.Join(dir, "other.cache")
		if err := apiclient.WriteCache(p, meta, func(w io.Writer) error { _, err := w.Write(good[40:200]); return err }); err != nil {
			t.Fatal(err)
		}
		if _, _, err := readRegistryCache(p, newBuilder()); !apiclient.Damaged(err) {
			t.Errorf("a cache of %s format %d read as a registry: %v", meta.Kind, meta.Format, err)
		}
	}
}
