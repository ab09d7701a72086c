package alerts_test

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/drover-telemetry/drover/alerts"
	"github.com/drover-telemetry/drover/api"
	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/tlsserve/tlstest"
)

// -api-url follows the one rule of internal/apiclient: https://, or plain
// http:// only on loopback, the base URL and nothing more; -api-ca-file
// must hold a certificate.
func TestAPIURLRule(t *testing.T) {
	notPEM := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		url, ca, want string // want: "" accepted, else part of the error
	}{
		{"https://drover-api", "", ""},
		{"https://drover-api:8443/", "", ""},
		{"http://127.0.0.1:8090", "", ""},
		{"http://localhost:8090", "", ""},
		{"http://[::1]:8090", "", ""},
		{"http://drover-api", "", "plain http only to a loopback address"},
		{"http://10.0.0.5:8090", "", "plain http only to a loopback address"},
		{"ftp://127.0.0.1", "", "want https://"},
		{"https://user:pw@drover-api", "", "nothing more"},
		{"https://drover-api/prefix", "", "nothing more"},
		{"https://drover-api", notPEM, "api-ca-file"},
		{"https://drover-api", filepath.Join(t.TempDir(), "missing.pem"), "api-ca-file"},
	} {
		cfg := alerts.DefaultConfig()
		cfg.Links = testLinks(t)
		cfg.APIURL, cfg.APIKey, cfg.APICAFile = c.url, "drv_k_s", c.ca
		err := cfg.Validate()
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v, want accepted", c.url, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s (ca %q): %v, want an error with %q", c.url, c.ca, err, c.want)
		}
	}
}

// Against a real drover api serving HTTPS, the engine trusts the
// certificate given by -api-ca-file and follows its rule set (so it turns
// ready); without it the engine refuses the API's certificate, so its key
// never goes to a server it cannot verify, and it stays unready.
func TestEngineFollowsAPIOverTLS(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "drover test CA")
	certFile, keyFile := ca.Server(t, "drover api").Write(t, dir, "api")
	caFile := ca.WriteCA(t, dir, "ca.pem")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	followerKey := filepath.Join(dir, "follower-key")
	acfg := api.DefaultConfig()
	acfg.Listen, acfg.DataDir, acfg.FollowerKeyFile, acfg.TLSCert, acfg.TLSKey = addr, filepath.Join(dir, "api"), followerKey, certFile, keyFile
	srv, err := api.New(acfg, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() { cancel(); <-done }()
	<-srv.Started()
	key, err := os.ReadFile(followerKey)
	if err != nil {
		t.Fatal(err)
	}

	start := func(name, ca string) (*alerts.Engine, *prometheus.Registry, func()) {
		cfg := alerts.DefaultConfig()
		cfg.Links, cfg.AlertPub = testLinks(t), ""
		cfg.DataDir = filepath.Join(dir, name)
		cfg.APIURL, cfg.APIKey, cfg.APICAFile = "https://"+addr, strings.TrimSpace(string(key)), ca
		reg := prometheus.NewRegistry()
		en, err := alerts.New(cfg, slog.New(slog.DiscardHandler), reg)
		if err != nil {
			t.Fatal(err)
		}
		ectx, stop := context.WithCancel(ctx)
		edone := make(chan error, 1)
		go func() { edone <- en.Run(ectx) }()
		return en, reg, func() { stop(); <-edone }
	}
	trusting, _, stopTrusting := start("trusting", caFile)
	defer stopTrusting()
	blind, blindReg, stopBlind := start("blind", "")
	defer stopBlind()
	deadline := time.Now().Add(20 * time.Second)
	for trusting.Ready() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("the engine with the API's CA is not ready: %v", trusting.Ready())
		}
		time.Sleep(20 * time.Millisecond)
	}
	loads := func() float64 {
		return testutil.ToFloat64(mustCounter(t, blindReg, "drover_alerts_rules_loads_total", "error", "api"))
	}
	for loads() < 2 { // refused twice: not a race with its first attempt
		if time.Now().After(deadline) {
			t.Fatal("the engine without the API's CA did not fail to load its rule set")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := blind.Ready(); err == nil {
		t.Error("the engine without the API's CA is ready: it took an unverified server's rule set")
	}
}

// mustCounter finds a counter of a registry by name and label values, in
// the order of the label names sorted (result before source).
func mustCounter(t *testing.T, reg *prometheus.Registry, name string, values ...string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	v := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for i, lp := range m.GetLabel() {
				if i >= len(values) || lp.GetValue() != values[i] {
					continue metric
				}
			}
			v += m.GetCounter().GetValue()
		}
	}
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})
	c.Add(v)
	return c
}

func testLinks(t *testing.T) clusterlink.Config {
	t.Helper()
	k, err := clusterlink.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return clusterlink.Config{Keys: []clusterlink.Key{k}}
}
