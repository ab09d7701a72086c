package registry

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestAuthenticate(t *testing.T) {
	r, err := New([]Device{{ID: "t1", TokenSHA256: HashToken("s3cret"), Fleet: "acme"}})
	if err != nil {
		t.Fatal(err)
	}
	if d, err := r.Authenticate("t1", "s3cret"); err != nil || d.Fleet != "acme" {
		t.Fatalf("good token: %v %+v", err, d)
	}
	if _, err := r.Authenticate("t1", "wrong"); !errors.Is(err, ErrBadToken) {
		t.Fatalf("bad token: %v", err)
	}
	if _, err := r.Authenticate("nope", "s3cret"); !errors.Is(err, ErrUnknownDevice) {
		t.Fatalf("unknown: %v", err)
	}
}

func TestNewRejectsBadEntries(t *testing.T) {
	good := HashToken("x")
	for name, devs := range map[string][]Device{
		"empty id":       {{ID: "", TokenSHA256: good}},
		"space":          {{ID: "a b", TokenSHA256: good}},
		"trailing \\":    {{ID: `tail\`, TokenSHA256: good}},
		"duplicate":      {{ID: "a", TokenSHA256: good}, {ID: "a", TokenSHA256: good}},
		"bad hash":       {{ID: "a", TokenSHA256: "xyz"}},
		"fleet with \\n": {{ID: "a", TokenSHA256: good, Fleet: "acme\n"}},
	} {
		if _, err := New(devs); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := New([]Device{{ID: "a", TokenSHA256: good, Fleet: "Acme Haulage, JHB"}}); err != nil {
		t.Errorf("good entry: %v", err)
	}
}

// TestBuildRefusesEntriesAlone: each bad entry is refused on its own, with
// its index, id and the rule it breaks; the other devices stay in.
func TestBuildRefusesEntriesAlone(t *testing.T) {
	good := HashToken("x")
	devs := []Device{
		{ID: "truck-0001", TokenSHA256: good, Fleet: "acme"},          // 0 ok
		{ID: "a b", TokenSHA256: good},                                // 1 space
		{ID: `tail\`, TokenSHA256: good},                              // 2 trailing backslash
		{ID: "tail_", TokenSHA256: good},                              // 3 ok: never meets tail\ in a sink
		{ID: "twice", TokenSHA256: good},                              // 4 duplicate
		{ID: "00:1A:2B:3C:4D:5E", TokenSHA256: strings.ToUpper(good)}, // 5 ok: hex in upper case
		{ID: "twice", TokenSHA256: HashToken("y")},                    // 6 duplicate
		{ID: "short-hash", TokenSHA256: good[:62]},                    // 7 bad hash
		{ID: "label", TokenSHA256: good, Region: `west\`},             // 8 bad label
		{ID: "", TokenSHA256: good},                                   // 9 empty id
		{ID: strings.Repeat("x", 129), TokenSHA256: good},             // 10 too long
	}
	r := Build(devs)
	if r.Len() != 3 {
		t.Errorf("Len = %d, want 3", r.Len())
	}
	for _, id := range []string{"truck-0001", "tail_", "00:1A:2B:3C:4D:5E"} {
		if _, err := r.Authenticate(id, "x"); err != nil {
			t.Errorf("%s: %v", id, err)
		}
	}
	want := []struct {
		index int
		in    string
	}{
		{1, `device 1 "a b": invalid device id: byte 1 (' ') is not one of A-Z a-z 0-9 . _ - :`},
		{2, `device 2 "tail\\": invalid device id: byte 4 ('\\') is not one of A-Z a-z 0-9 . _ - :`},
		{4, `device 4 "twice": id listed 2 times (devices 4, 6): every entry of it is refused`},
		{6, `device 6 "twice": id listed 2 times (devices 4, 6)`},
		{7, `device 7 "short-hash": token_sha256 must be 64 hex characters`},
		{8, `device 8 "label": region: invalid label: "west\\" has a backslash`},
		{9, `device 9 "": invalid device id: empty`},
		{10, `invalid device id: 129 bytes, at most 128`},
	}
	got := r.Rejected()
	if len(got) != len(want) {
		t.Fatalf("rejected %v, want %d entries", got, len(want))
	}
	for i, w := range want {
		if got[i].Index != w.index || got[i].ID != devs[w.index].ID || !strings.Contains(got[i].String(), w.in) {
			t.Errorf("rejection %d: %q (index %d), want index %d and %q", i, got[i], got[i].Index, w.index, w.in)
		}
	}
	for _, id := range []string{"twice", "a b", `tail\`} {
		if _, err := r.Authenticate(id, "x"); !errors.Is(err, ErrUnknownDevice) {
			t.Errorf("refused %q: Authenticate = %v, want ErrUnknownDevice", id, err)
		}
	}
}

// TestLoadOlderRegistry: a file an older drover accepted, with ids the one
// definition now refuses, still loads: those devices are refused, by name
// and rule, and the rest connect. A file that does not parse is refused
// whole.
func TestLoadOlderRegistry(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "devices.json")
	h := HashToken("x")
	file := `{"devices": [
  {"id": "truck-1", "token_sha256": "` + h + `", "fleet": "acme"},
  {"id": "trück-2", "token_sha256": "` + h + `"},
  {"id": "depot/3", "token_sha256": "` + h + `"},
  {"id": "tail\\", "token_sha256": "` + h + `"},
  {"id": "tail_", "token_sha256": "` + h + `"}
]}`
	if err := os.WriteFile(path, []byte(file), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if r.Len() != 2 {
		t.Errorf("Len = %d, want 2", r.Len())
	}
	var ids []string
	for _, rj := range r.Rejected() {
		ids = append(ids, rj.ID)
		if !strings.Contains(rj.Reason, "is not one of A-Z a-z 0-9 . _ - :") {
			t.Errorf("%v: reason does not state the rule", rj)
		}
	}
	if want := []string{"trück-2", "depot/3", `tail\`}; !slices.Equal(ids, want) {
		t.Errorf("rejected %q, want %q", ids, want)
	}

	for name, bad := range map[string]string{
		"not JSON":      "{not json",
		"unknown field": `{"devices": [{"id": "a", "token_sha256": "` + h + `", "token": "plain"}]}`,
	} {
		if err := os.WriteFile(path, []byte(bad), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(path); err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: Load = %v, want an error naming the file", name, err)
		}
	}
}

// TestStoreCountsAndLogsRejected: the gauge and the log say which entries
// are refused, at the first load and at every reload; a reload that both
// revokes a device and carries a bad entry revokes the device.
func TestStoreCountsAndLogsRejected(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "devices.json")
	h := HashToken("x")
	if err := Write(path, []Device{{ID: "a", TokenSHA256: h}, {ID: "b", TokenSHA256: h}, {ID: "c d", TokenSHA256: h}}); err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	reg := prometheus.NewRegistry()
	s, err := NewStore(path, slog.New(slog.NewTextHandler(&logs, nil)), reg)
	if err != nil {
		t.Fatal(err)
	}
	rejected := func() float64 {
		v, err := testutil.GatherAndCount(reg, "drover_registry_rejected_entries")
		if err != nil || v != 1 {
			t.Fatalf("gauge not registered: %d, %v", v, err)
		}
		return testutil.ToFloat64(s.rejected)
	}
	if got := rejected(); got != 1 {
		t.Errorf("rejected entries = %v, want 1", got)
	}
	if l := logs.String(); !strings.Contains(l, `device="c d"`) || !strings.Contains(l, "is not one of A-Z") {
		t.Errorf("log does not name the refused device and the rule:\n%s", l)
	}

	// Revoke b and add a bad entry in the same edit: b is out.
	s.interval = 10 * time.Millisecond
	runStore(t, s)
	if err := Write(path, []Device{{ID: "a", TokenSHA256: h}, {ID: "c d", TokenSHA256: h}, {ID: "e\n", TokenSHA256: h}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { _, ok := s.Current().Lookup("b"); return !ok })
	if got := rejected(); got != 2 {
		t.Errorf("rejected entries = %v, want 2", got)
	}
	if _, err := s.Current().Authenticate("a", "x"); err != nil {
		t.Errorf("a: %v", err)
	}
}

// TestStoreLogsRejectedBounded: a file whose every entry is refused logs a
// bounded number of lines, and says how many more there are.
func TestStoreLogsRejectedBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "devices.json")
	devs := make([]Device, 1000)
	for i := range devs {
		devs[i] = Device{ID: "bad id " + strconv.Itoa(i), TokenSHA256: HashToken("x")}
	}
	if err := Write(path, devs); err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	if _, err := NewStore(path, slog.New(slog.NewTextHandler(&logs, nil)), nil); err != nil {
		t.Fatal(err)
	}
	lines := strings.Count(logs.String(), "\n")
	if lines != maxRejectedLogged+1 || !strings.Contains(logs.String(), "more=980") {
		t.Errorf("%d log lines, want %d ending with more=980:\n%s", lines, maxRejectedLogged+1, logs.String())
	}
}

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestStoreReloadsOnChangeAndSIGHUP(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "devices.json")
	if err := Write(path, []Device{{ID: "a", TokenSHA256: HashToken("1")}}); err != nil {
		t.Fatal(err)
	}
	// Two stores of the same file: one polls it every 10 ms, the other only
	// hears SIGHUP (its poll is an hour away), so each trigger is tested alone.
	polling, err := NewStore(path, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	polling.interval = 10 * time.Millisecond
	hup, err := NewStore(path, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	hup.interval = time.Hour
	// The test's own subscription: a SIGHUP that reaches the process before
	// the stores subscribe must not take the default action (exit), which
	// would end the whole test binary ("signal: hangup").
	guard := make(chan os.Signal, 4)
	signal.Notify(guard, syscall.SIGHUP)
	defer signal.Stop(guard)
	runStore(t, polling)
	runStore(t, hup)
	reloads := func(s *Store, result string) float64 { return testutil.ToFloat64(s.reloads.WithLabelValues(result)) }

	// A changed file is picked up by polling.
	if err := Write(path, []Device{{ID: "a", TokenSHA256: HashToken("1")}, {ID: "b", TokenSHA256: HashToken("2")}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { _, ok := polling.Current().Lookup("b"); return ok })

	// SIGHUP reloads; until hup has subscribed, a SIGHUP may reach only the
	// guard, so send it until hup has reloaded.
	waitFor(t, func() bool {
		syscall.Kill(os.Getpid(), syscall.SIGHUP)
		_, ok := hup.Current().Lookup("b")
		return ok
	})

	// A broken file keeps the registry in force, in both stores.
	errBefore := reloads(hup, "error")
	if err := os.WriteFile(path, []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitFor(t, func() bool { return reloads(hup, "error") > errBefore && reloads(polling, "error") > 0 })
	for name, s := range map[string]*Store{"polling": polling, "hup": hup} {
		if _, ok := s.Current().Lookup("b"); !ok {
			t.Errorf("%s: the broken file replaced the registry", name)
		}
	}
	// A reload of the broken file never counts as ok. Counted from here:
	// a SIGHUP of the loop above may have been handled after the snapshot
	// of the counters, reading the good file; from here on, every reload
	// reads the broken one.
	okBefore, errNow := reloads(hup, "ok"), reloads(hup, "error")
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitFor(t, func() bool { return reloads(hup, "error") > errNow })
	if got := reloads(hup, "ok"); got != okBefore {
		t.Errorf("hup store: %v ok reloads after the broken file, want %v", got, okBefore)
	}

	// SIGHUP picks up the fixed file.
	if err := Write(path, []Device{{ID: "c", TokenSHA256: HashToken("3")}}); err != nil {
		t.Fatal(err)
	}
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitFor(t, func() bool { _, ok := hup.Current().Lookup("c"); return ok })
}

// runStore runs s until the test ends.
func runStore(t *testing.T, s *Store) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestStoreSeesFileRenamedOver: a new file renamed over the registry (an
// atomic writer, a Kubernetes ConfigMap update) is picked up even with the
// same size and modification time as the one it replaces.
func TestStoreSeesFileRenamedOver(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "devices.json")
	if err := Write(path, []Device{{ID: "b", TokenSHA256: HashToken("1")}}); err != nil {
		t.Fatal(err)
	}
	s, err := NewStore(path, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	s.interval = 10 * time.Millisecond
	old, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	next := filepath.Join(dir, "devices.json.new")
	if err := Write(next, []Device{{ID: "c", TokenSHA256: HashToken("1")}}); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(next, old.ModTime(), old.ModTime()); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(next); err != nil || st.Size() != old.Size() || !st.ModTime().Equal(old.ModTime()) {
		t.Fatalf("the replacement differs in size or time (%v, %v): the test needs them equal", st, err)
	}
	if err := os.Rename(next, path); err != nil {
		t.Fatal(err)
	}
	runStore(t, s)
	waitFor(t, func() bool { _, ok := s.Current().Lookup("c"); return ok })
}

// TestWriteKeepsPermissions: rewriting a registry keeps the mode of the file
// it replaces, so that a frontend running as another user can still read it.
func TestWriteKeepsPermissions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "devices.json")
	devs := []Device{{ID: "a", TokenSHA256: HashToken("1")}}
	if err := Write(path, devs); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("new file mode %v, want 0600", st.Mode().Perm())
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Write(path, append(devs, Device{ID: "b", TokenSHA256: HashToken("2")})); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o644 {
		t.Errorf("rewritten file mode %v, want 0644 as before", st.Mode().Perm())
	}
	got, err := ReadFile(path)
	if err != nil || len(got) != 2 {
		t.Errorf("ReadFile: %v %v", got, err)
	}
}
