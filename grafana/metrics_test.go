package grafana

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/internal/testenv"
)

// promMetricNames returns the drover_ metric names a PromQL expression
// refers to, in order of first appearance: identifiers starting with
// drover_, outside string literals (label values such as queue=~"sub-.*").
// Label names never start with drover_, and function names, keywords and
// durations do not either, so no PromQL parser is needed.
func promMetricNames(expr string) []string {
	var names []string
	isIdent := func(c byte, first bool) bool {
		return c == '_' || c == ':' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || !first && '0' <= c && c <= '9'
	}
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			j := i + 1
			for j < len(expr) && expr[j] != c {
				if expr[j] == '\\' && c != '`' {
					j++
				}
				j++
			}
			i = j + 1
		case isIdent(c, true):
			j := i
			for j < len(expr) && isIdent(expr[j], false) {
				j++
			}
			if w := expr[i:j]; strings.HasPrefix(w, "drover_") && !slices.Contains(names, w) {
				names = append(names, w)
			}
			i = j
		case '0' <= c && c <= '9': // a number or duration: 5m, 1e3
			for i < len(expr) && isIdent(expr[i], false) {
				i++
			}
		default:
			i++
		}
	}
	return names
}

func TestPromMetricNames(t *testing.T) {
	for expr, want := range map[string][]string{
		`histogram_quantile(0.99, sum by (le) (rate(drover_frontend_ack_latency_seconds_bucket{job=~"$job"}[$__rate_interval])))`: {"drover_frontend_ack_latency_seconds_bucket"},
		`sum(drover_queue_depth_entries{queue=~"drover_not_a_metric"}) + sum(increase(drover_a_total[$__range]))`:                 {"drover_queue_depth_entries", "drover_a_total"},
		`max by (writer) (drover_x) / on(writer) drover_x`:                                                                        {"drover_x"},
		`sum(rate(x_drover_y[5m]))`:                            nil,
		`'drover_in_single_quotes' + drover_b{a="\"drover_c"}`: {"drover_b"},
	} {
		if got := promMetricNames(expr); !slices.Equal(got, want) {
			t.Errorf("promMetricNames(%q) = %q, want %q", expr, got, want)
		}
	}
}

// pipelineMetrics reads the metric names of every PromQL expression of
// pipeline.json, mapped to where each is used.
func pipelineMetrics(t *testing.T) map[string][]string {
	t.Helper()
	const f = "dashboards/pipeline.json"
	d, ok := loadDashboards(t)[filepath.Join("dashboards", "pipeline.json")]
	if !ok {
		t.Fatalf("no %s", f)
	}
	used := map[string][]string{}
	for _, p := range allPanels(d.Panels) {
		if p.Type == "row" {
			continue
		}
		if p.Datasource.UID != promDSUID {
			t.Errorf("%s: panel %q does not use the Prometheus data source", f, p.Title)
		}
		for _, tg := range p.Targets {
			for _, n := range promMetricNames(tg.Expr) {
				used[n] = append(used[n], fmt.Sprintf("%q/%s", p.Title, tg.RefID))
			}
			// Only Grafana's own variables and the dashboard's.
			rest := strings.NewReplacer("$__rate_interval", "", "$__range", "", "$__interval", "", "$job", "", "$instance", "").Replace(tg.Expr)
			if strings.Contains(rest, "$") {
				t.Errorf("%s: panel %q target %s: unknown variable in %q", f, p.Title, tg.RefID, tg.Expr)
			}
		}
	}
	for _, v := range d.Templating.List {
		for _, n := range promMetricNames(v.Query) {
			used[n] = append(used[n], "variable "+v.Name)
		}
	}
	if len(used) == 0 {
		t.Fatalf("%s names no drover_ metric", f)
	}
	return used
}

// family is the metric family a name in PromQL belongs to, given the
// exposition's families and their types: a histogram's (or summary's)
// _bucket, _sum and _count series belong to the family without the suffix.
func family(name string, types map[string]string) (string, bool) {
	if _, ok := types[name]; ok {
		return name, true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		if typ := types[base]; typ == "histogram" || (typ == "summary" && suffix != "_bucket") {
			return base, true
		}
	}
	return "", false
}

// metricTypes reads "# TYPE name type" lines of a text exposition, keeping
// only families that have at least one sample.
func metricTypes(r io.Reader) map[string]string {
	types := map[string]string{}
	sampled := map[string]bool{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			if f := strings.Fields(rest); len(f) == 2 {
				types[f[0]] = f[1]
			}
			continue
		}
		if line == "" || line[0] == '#' {
			continue
		}
		name, _, _ := strings.Cut(line, " ")
		name, _, _ = strings.Cut(name, "{")
		sampled[name] = true
	}
	for n := range types {
		if !sampled[n] && !sampled[n+"_count"] && !sampled[n+"_bucket"] {
			delete(types, n)
		}
	}
	return types
}

func TestFamilyMapping(t *testing.T) {
	types := metricTypes(strings.NewReader(`# TYPE drover_h histogram
drover_h_bucket{le="+Inf"} 1
drover_h_sum 1
drover_h_count 1
# TYPE drover_c_total counter
drover_c_total 3
# TYPE drover_empty counter
`))
	for name, want := range map[string]string{"drover_h_bucket": "drover_h", "drover_h_sum": "drover_h", "drover_h": "drover_h", "drover_c_total": "drover_c_total", "drover_c": "", "drover_c_total_count": "", "drover_empty": ""} {
		if got, _ := family(name, types); got != want {
			t.Errorf("family(%s) = %q, want %q", name, got, want)
		}
	}
}

// freeAddr is a loopback address with a port free a moment ago.
func freeAddr(t *testing.T) string { return testenv.FreeAddr(t) }

// TestPipelineMetricsAreExported builds drover and runs "drover all" with a
// simulated fleet, a lake sink and an InfluxDB sink pointed at a closed port
// (so that the sink's error families exist: they are labelled by kind and
// appear with the first error), then polls its /metrics until every metric
// family pipeline.json's PromQL refers to is there. A misspelt or renamed
// metric would leave a dashboard panel empty forever.
func TestPipelineMetricsAreExported(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs drover (-short)")
	}
	used := pipelineMetrics(t)

	dir := t.TempDir()
	bin := filepath.Join(dir, "drover")
	build := exec.Command("go", "build", "-o", bin, "github.com/drover-telemetry/drover/cmd/drover")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	ops := freeAddr(t)
	args := []string{"all",
		"-simulate", "20",
		"-data", filepath.Join(dir, "data"),
		"-sinks", "lake,influx",
		"-influx-url", "http://" + freeAddr(t), // nothing listens: transient sink errors
		"-ops-listen", ops,
		"-frontend.listen", freeAddr(t),
		"-router.listen", "tcp://" + freeAddr(t),
		"-router.live-pub", "tcp://" + freeAddr(t),
		"-router.store-listen", "tcp://" + freeAddr(t),
		"-livefeed.listen", freeAddr(t),
		"-shutdown-timeout", "10s",
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "DROVER_ALL_LOG_LEVEL=warn")
	logs, err := os.Create(filepath.Join(dir, "drover.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			t.Errorf("drover did not stop within 20 s of SIGTERM")
		}
		if t.Failed() {
			if b, err := os.ReadFile(logs.Name()); err == nil {
				t.Logf("drover's log:\n%s", b)
			}
		}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var missing []string
	for {
		missing = missing[:0]
		types, err := scrape(ctx, "http://"+ops+"/metrics")
		if err == nil {
			for name := range used {
				if _, ok := family(name, types); !ok {
					missing = append(missing, name)
				}
			}
			if len(missing) == 0 {
				t.Logf("all %d metric names of pipeline.json are exported", len(used))
				return
			}
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("drover exited early: %v", err)
		case <-ctx.Done():
			sort.Strings(missing)
			for _, m := range missing {
				t.Errorf("%s (used by %s) is not exported by drover all", m, strings.Join(used[m], ", "))
			}
			if err != nil {
				t.Errorf("last scrape: %v", err)
			}
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func scrape(ctx context.Context, url string) (map[string]string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	return metricTypes(resp.Body), nil
}
