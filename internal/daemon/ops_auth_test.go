package daemon

import (
	"flag"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func getWith(t *testing.T, url, token string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

// The default ops server binds loopback and serves no profiles: the issue
// was pprof, cmdline included, open on every interface.
func TestOpsDefaultsLoopbackWithoutPprof(t *testing.T) {
	cfg := DefaultOpsConfig(9180)
	if cfg.Listen != "127.0.0.1:9180" || cfg.Pprof || cfg.Token != "" {
		t.Fatalf("DefaultOpsConfig = %+v, want loopback, no pprof, no token", cfg)
	}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	if err := fs.Parse([]string{"-ops-listen", "127.0.0.1:0"}); err != nil {
		t.Fatal(err)
	}
	o := newOps(t, cfg, nil)
	base, _ := startOps(t, o)
	if !strings.HasPrefix(o.Addr(), "127.0.0.1:") {
		t.Fatalf("listening on %s", o.Addr())
	}
	for _, p := range []string{"/debug/pprof/", "/debug/pprof/cmdline", "/debug/pprof/profile?seconds=1"} {
		if code, _, _ := getWith(t, base+p, ""); code != http.StatusNotFound {
			t.Errorf("%s without -pprof = %d, want 404", p, code)
		}
	}
	if code, _, _ := getWith(t, base+"/metrics", ""); code != 200 {
		t.Errorf("/metrics without a token configured = %d, want 200", code)
	}
}

func TestOpsTokenGuardsMetricsAndPprofNotProbes(t *testing.T) {
	reg := prometheus.NewRegistry()
	const token = "ops-token-0123456789abcdef"
	o := newOps(t, OpsConfig{Listen: "127.0.0.1:0", Pprof: true, Token: token}, reg)
	base, _ := startOps(t, o)
	for _, p := range []string{"/metrics", "/debug/pprof/", "/debug/pprof/cmdline"} {
		for _, bad := range []string{"", "wrong", token + "x", token[:len(token)-1]} {
			code, h, body := getWith(t, base+p, bad)
			if code != http.StatusUnauthorized {
				t.Errorf("%s with token %q = %d, want 401", p, bad, code)
			}
			if !strings.HasPrefix(h.Get("WWW-Authenticate"), "Bearer") || strings.Contains(body, "drover_") {
				t.Errorf("%s refused with %q / %q", p, h.Get("WWW-Authenticate"), body)
			}
		}
		if code, _, _ := getWith(t, base+p, token); code != 200 {
			t.Errorf("%s with the token = %d, want 200", p, code)
		}
	}
	// The token is not taken from the query: it would end up in access logs.
	if code, _, _ := getWith(t, base+"/metrics?token="+token, ""); code != http.StatusUnauthorized {
		t.Errorf("/metrics with the token in the query = %d, want 401", code)
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		if code, _, _ := getWith(t, base+p, ""); code != 200 {
			t.Errorf("%s without a token = %d, want 200 (probes stay open)", p, code)
		}
	}
	_, _, metrics := getWith(t, base+"/metrics", token)
	if !strings.Contains(metrics, `drover_ops_unauthorized_total{path="/metrics"} 5`) {
		t.Errorf("refusals not counted:\n%s", grepLines(metrics, "drover_ops_unauthorized_total"))
	}
}

func TestOpsRefusesOpenPprofOffLoopback(t *testing.T) {
	for _, tc := range []struct {
		cfg OpsConfig
		ok  bool
	}{
		{OpsConfig{Listen: "127.0.0.1:9180", Pprof: true}, true},
		{OpsConfig{Listen: "[::1]:9180", Pprof: true}, true},
		{OpsConfig{Listen: "localhost:9180", Pprof: true}, true},
		{OpsConfig{Listen: ":9180", Pprof: true}, false},
		{OpsConfig{Listen: "0.0.0.0:9180", Pprof: true}, false},
		{OpsConfig{Listen: "10.1.2.3:9180", Pprof: true}, false},
		{OpsConfig{Listen: "0.0.0.0:9180", Pprof: true, Token: "t0ken-long-enough"}, true},
		{OpsConfig{Listen: "0.0.0.0:9180"}, true}, // metrics open: warned about, allowed (Prometheus in a pod)
		{OpsConfig{Listen: "nonsense"}, false},
	} {
		err := tc.cfg.Validate()
		if (err == nil) != tc.ok {
			t.Errorf("Validate(%+v) = %v, want ok=%v", tc.cfg, err, tc.ok)
		}
	}
}

func grepLines(s, sub string) string {
	var out []string
	for l := range strings.SplitSeq(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
