package endpoints_test

import (
	"context"
	"flag"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/drover-telemetry/drover/internal/endpoints"
	"github.com/drover-telemetry/drover/internal/testenv"
)

func testConfig(dns *testenv.DNSServer) endpoints.Config {
	return endpoints.Config{Interval: 100 * time.Millisecond, Server: dns.Addr}
}

// TestResolvesEveryAddress: a dns+tcp:// name stands for every address it
// resolves to, merged with the static endpoints, sorted, without duplicates.
func TestResolvesEveryAddress(t *testing.T) {
	dns := testenv.DNS(t)
	dns.Set("routers.test", "10.0.0.2", "10.0.0.1", "fd00::1")
	// Refresh only: a lookup may take its full time (the 100 ms of
	// testConfig's interval, which bounds a lookup, timed out one family's
	// query on a loaded machine).
	cfg := testConfig(dns)
	cfg.Interval = 10 * time.Second
	w, err := endpoints.NewWatcher([]string{"dns+tcp://routers.test:5555", "tcp://static:1", "tcp://10.0.0.1:5555"},
		cfg, "frontend", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := w.Current(); !slices.Equal(got, []string{"tcp://10.0.0.1:5555", "tcp://static:1"}) {
		t.Errorf("before the first lookup: %q; want the static endpoints", got)
	}
	got, changed := w.Refresh(context.Background())
	want := []string{"tcp://10.0.0.1:5555", "tcp://10.0.0.2:5555", "tcp://[fd00::1]:5555", "tcp://static:1"}
	if !changed || !slices.Equal(got, want) {
		t.Errorf("Refresh = %q, %v; want %q, true", got, changed, want)
	}
	if _, changed := w.Refresh(context.Background()); changed {
		t.Error("a second Refresh with the same records reported a change")
	}
}

// TestOneFamilyFailingKeepsTheList: when the AAAA lookup fails and the A
// lookup answers, the name keeps every address it had; a partial answer
// would drop the IPv6 routers until the next refresh.
func TestOneFamilyFailingKeepsTheList(t *testing.T) {
	dns := testenv.DNS(t)
	dns.Set("routers.test", "10.0.0.1", "fd00::1")
	cfg := testConfig(dns)
	cfg.Interval = 10 * time.Second // Refresh only
	w, err := endpoints.NewWatcher([]string{"dns+tcp://routers.test:5555"}, cfg, "frontend", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"tcp://10.0.0.1:5555", "tcp://[fd00::1]:5555"}
	if got, _ := w.Refresh(context.Background()); !slices.Equal(got, want) {
		t.Fatalf("Refresh = %q, want %q", got, want)
	}
	dns.FailAAAA("routers.test", true)
	if got, changed := w.Refresh(context.Background()); changed || !slices.Equal(got, want) {
		t.Errorf("with AAAA failing: Refresh = %q, changed %v; want %q kept", got, changed, want)
	}
	// A name with A records only is an answer, not a failure.
	dns.FailAAAA("routers.test", false)
	dns.Set("routers.test", "10.0.0.2")
	if got, _ := w.Refresh(context.Background()); !slices.Equal(got, []string{"tcp://10.0.0.2:5555"}) {
		t.Errorf("A records only: Refresh = %q", got)
	}
}

// TestFollowsScaleOutAndIn: Run calls update with the whole list when
// records appear and disappear, without a restart.
func TestFollowsScaleOutAndIn(t *testing.T) {
	dns := testenv.DNS(t)
	dns.Set("routers.test", "127.0.0.1")
	reg := prometheus.NewRegistry()
	w, err := endpoints.NewWatcher([]string{"dns+tcp://routers.test:5555"}, testConfig(dns), "storage-writer/lake", nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var lists [][]string
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(ctx, func(eps []string) {
			mu.Lock()
			lists = append(lists, eps)
			mu.Unlock()
		})
	}()
	last := func() []string {
		mu.Lock()
		defer mu.Unlock()
		if len(lists) == 0 {
			return nil
		}
		return lists[len(lists)-1]
	}
	waitList := func(want ...string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !slices.Equal(last(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("endpoints %q; want %q", last(), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitList("tcp://127.0.0.1:5555")
	dns.Set("routers.test", "127.0.0.1", "127.0.0.2")
	waitList("tcp://127.0.0.1:5555", "tcp://127.0.0.2:5555")
	dns.Set("routers.test", "127.0.0.2")
	waitList("tcp://127.0.0.2:5555")
	cancel()
	<-done
	if n := testutil.ToFloat64(gauge(t, reg, "storage-writer/lake")); n != 1 {
		t.Errorf("drover_endpoints = %v; want 1", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(lists) != 3 {
		t.Errorf("update called %d times for 3 changes: %q", len(lists), lists)
	}
}

// TestLookupFailureKeepsAddresses: a DNS outage, or a name that stops
// existing, never empties the list: a writer must not drop routers that
// hold its data because DNS failed.
func TestLookupFailureKeepsAddresses(t *testing.T) {
	dns := testenv.DNS(t)
	dns.Set("routers.test", "127.0.0.1", "127.0.0.2")
	reg := prometheus.NewRegistry()
	w, err := endpoints.NewWatcher([]string{"dns+tcp://routers.test:5555", "dns+tcp://never.test:5555"},
		testConfig(dns), "livefeed", nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	want := []string{"tcp://127.0.0.1:5555", "tcp://127.0.0.2:5555"}
	if got, _ := w.Refresh(ctx); !slices.Equal(got, want) {
		t.Fatalf("Refresh = %q; want %q (never.test does not resolve and adds nothing)", got, want)
	}
	dns.Fail("routers.test", true)
	if got, changed := w.Refresh(ctx); changed || !slices.Equal(got, want) {
		t.Errorf("during SERVFAIL: %q (changed %v); want the addresses kept", got, changed)
	}
	dns.Fail("routers.test", false)
	dns.Set("routers.test") // NXDOMAIN
	if got, changed := w.Refresh(ctx); changed || !slices.Equal(got, want) {
		t.Errorf("after NXDOMAIN: %q (changed %v); want the addresses kept", got, changed)
	}
	failures := testutil.CollectAndCount(reg, "drover_endpoints_lookup_failures_total")
	if failures != 2 { // one series per name: routers.test and never.test
		t.Errorf("failure series: %d; want 2", failures)
	}
	dns.Set("routers.test", "127.0.0.3")
	if got, changed := w.Refresh(ctx); !changed || !slices.Equal(got, []string{"tcp://127.0.0.3:5555"}) {
		t.Errorf("after the name resolves again: %q (changed %v)", got, changed)
	}
}

// TestStaticOnly: without a dns+tcp:// entry nothing is looked up and Run
// returns at once.
func TestStaticOnly(t *testing.T) {
	dns := testenv.DNS(t)
	w, err := endpoints.NewWatcher([]string{"tcp://a:1", "tcp://b:2"}, testConfig(dns), "frontend", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if w.Dynamic() {
		t.Error("Dynamic() with static endpoints only")
	}
	done := make(chan struct{})
	go func() {
		w.Run(context.Background(), func([]string) { t.Error("update called for a static list") })
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return for a static list")
	}
}

// TestSharedRegistry: the components of drover all register the metrics
// once and share them, each with its consumer label.
func TestSharedRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	for _, c := range []string{"frontend", "livefeed", "storage-writer/lake"} {
		if _, err := endpoints.NewWatcher([]string{"tcp://a:1"}, endpoints.DefaultConfig(), c, nil, reg); err != nil {
			t.Fatalf("%s: %v", c, err)
		}
	}
	if n := testutil.CollectAndCount(reg, "drover_endpoints"); n != 3 {
		t.Errorf("drover_endpoints series: %d; want 3", n)
	}
}

func TestConfig(t *testing.T) {
	var c endpoints.Config = endpoints.DefaultConfig()
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	c.RegisterFlags(fs, "-routers")
	if err := fs.Parse([]string{"-resolve-interval", "2s", "-dns-server", "127.0.0.1:8600"}); err != nil {
		t.Fatal(err)
	}
	if c.Interval != 2*time.Second || c.Server != "127.0.0.1:8600" || c.Validate() != nil {
		t.Errorf("parsed %+v, Validate %v", c, c.Validate())
	}
	for name, bad := range map[string]endpoints.Config{
		"interval": {Interval: time.Millisecond},
		"server":   {Interval: time.Second, Server: "nohost"},
		"port 0":   {Interval: time.Second, Server: "127.0.0.1:0"},
	} {
		if bad.Validate() == nil {
			t.Errorf("%s: %+v accepted", name, bad)
		}
	}
	for _, ep := range []string{"dns+tcp://:5555", "dns+tcp://name", "dns+tcp://*:1"} {
		if _, err := endpoints.NewWatcher([]string{ep}, endpoints.DefaultConfig(), "x", nil, nil); err == nil {
			t.Errorf("%q accepted", ep)
		}
	}
	if _, err := endpoints.NewWatcher([]string{"tcp://a:1", "tcp://a:1"}, endpoints.DefaultConfig(), "x", nil, nil); err == nil ||
		!strings.Contains(err.Error(), "twice") {
		t.Errorf("duplicate: %v", err)
	}
}

func gauge(t *testing.T, reg *prometheus.Registry, consumer string) prometheus.Collector {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != "drover_endpoints" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "consumer" && l.GetValue() == consumer {
					return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "x"}, func() float64 { return m.GetGauge().GetValue() })
				}
			}
		}
	}
	t.Fatalf("no drover_endpoints{consumer=%q}", consumer)
	return nil
}
