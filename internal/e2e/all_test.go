package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/internal/testenv"
)

// statusLine matches drover all's status line (cmd/drover/status.go).
var statusLine = regexp.MustCompile(`drover all: ([\d,]+) devices, ([\d,]+) readings/s acked \| written/s: lake ([\d,]+), influx ([\d,]+) \| live clients: ([\d,]+) \| waiting: `)

func atoi(s string) int {
	n, _ := strconv.Atoi(strings.ReplaceAll(s, ",", ""))
	return n
}

// TestAllAsNewUser runs `drover all -simulate 200` with both sinks and a
// real InfluxDB, as make run does: the simulated devices start once the
// frontend listens (no first connect is refused, no warning greets the
// user); the writer creates its missing InfluxDB database; the writers'
// flags reach them (-storage-writer.influx-measurement); and a status line
// with real numbers appears every -status-interval.
func TestAllAsNewUser(t *testing.T) {
	t.Parallel()
	inf := testenv.InfluxD(t)
	const devices = 200
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	data := t.TempDir()
	apiAddr := freeAddr(t)
	all := newProc(t, "all", "all", "-data", data, "-simulate", strconv.Itoa(devices), "-sinks", "lake,influx",
		"-influx-url", inf.URL, "-storage-writer.influx-database", "all_e2e", "-storage-writer.influx-measurement", "vehicles",
		"-status-interval", "1s",
		"-frontend.listen", freeAddr(t), "-router.listen", "tcp://"+freeAddr(t),
		"-router.live-pub", "tcp://"+freeAddr(t), "-router.store-listen", "tcp://"+freeAddr(t),
		"-livefeed.listen", freeAddr(t), "-livefeed.dev-token-file", secretFile(t, "e2e-all-token"),
		"-api.listen", apiAddr, "-alerts.alert-pub", "tcp://"+freeAddr(t))
	all.start(ctx)

	var last []string
	waitFor(t, 60*time.Second, "status lines with every device connected and both sinks writing", func() bool {
		b, _ := os.ReadFile(all.logPath)
		m := statusLine.FindAllStringSubmatch(string(b), -1)
		if len(m) < 2 {
			return false
		}
		last = m[len(m)-1]
		return atoi(last[1]) == devices && atoi(last[2]) > 0 && atoi(last[3]) > 0 && atoi(last[4]) > 0
	})
	t.Logf("status line: %s", last[0])

	fams, err := all.metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n, ok := metricValue(fams, "drover_sim_connect_failures_total", nil); ok && n > 0 {
		t.Errorf("%v first connects failed: the simulated devices started before the frontend listened", n)
	}
	if n, _ := metricValue(fams, "drover_frontend_connections", nil); n != devices {
		t.Errorf("drover_frontend_connections = %v, want %d", n, devices)
	}
	if n, _ := metricValue(fams, "drover_influx_databases_created_total", nil); n != 1 {
		t.Errorf("drover_influx_databases_created_total = %v, want 1 (drover all creates the database)", n)
	}
	b, _ := os.ReadFile(all.logPath)
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
			t.Errorf("a new user is greeted by: %s", l)
		}
	}
	// The simulated fleet is registered through the control plane, and
	// drover ctl lists it with its presence.
	key, err := os.ReadFile(filepath.Join(data, "api", "api-admin-key"))
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	waitFor(t, 10*time.Second, "drover ctl list: every simulated vehicle, seen via the frontend", func() bool {
		ctl := exec.CommandContext(ctx, droverBin, "ctl", "-api", "http://"+apiAddr, "list", "-json")
		ctl.Env = append(os.Environ(), "DROVER_API_KEY="+strings.TrimSpace(string(key)))
		out, err := ctl.Output()
		if err != nil {
			t.Fatalf("drover ctl list: %v", err)
		}
		listed = strings.Split(strings.TrimSpace(string(out)), "\n")
		seen := 0
		for _, l := range listed {
			if strings.Contains(l, `"connected":true`) {
				seen++
			}
		}
		return len(listed) == devices && seen == devices
	})
	// The alert engine runs in drover all and follows its own API (with
	// the follower key): a fence over the whole region, created through
	// the API, raises an alert for the vehicles in it, which the engine
	// reports back to the API.
	admin := strings.TrimSpace(string(key))
	apiDo(ctx, t, admin, "POST", "http://"+apiAddr+"/v1/geofences", `{"id": "southern-africa", "name": "Southern Africa",
		"events": ["inside"], "geometry": {"type": "Polygon", "coordinates": [[[10, -36], [42, -36], [42, -15], [10, -15], [10, -36]]]}}`, nil)
	var alerted struct {
		Items []struct {
			Device string `json:"device"`
			Fence  string `json:"fence"`
		} `json:"items"`
	}
	waitFor(t, 30*time.Second, "alerts of the fence in the API", func() bool {
		apiDo(ctx, t, admin, "GET", "http://"+apiAddr+"/v1/alerts?type=geofence_inside&limit=500", "", &alerted)
		return len(alerted.Items) > 0
	})
	if a := alerted.Items[0]; a.Fence != "southern-africa" || !strings.HasPrefix(a.Device, "dev-") {
		t.Errorf("alert %+v: want one of fence southern-africa about a simulated vehicle", a)
	}
	t.Logf("drover all's alert engine: %d vehicles inside the fence so far", len(alerted.Items))

	rows := inf.WithDatabase(t, "all_e2e").Query(t, `SELECT count(seq) FROM vehicles`)
	if len(rows) != 1 {
		t.Fatalf("no points in measurement vehicles of database all_e2e: %v", rows)
	}
	if n, _ := testenv.Float(rows[0][1]); n == 0 {
		t.Error("no points in measurement vehicles")
	}
	all.stop(30 * time.Second)
}

// apiDo sends a request with an API key and decodes a JSON answer into
// out (nil: none), failing the test on an error or a status other than
// 2xx.
func apiDo(ctx context.Context, t *testing.T, key, method, url, body string, out any) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		t.Fatalf("%s %s: %s: %s", method, url, resp.Status, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v", method, url, err)
		}
	}
}
