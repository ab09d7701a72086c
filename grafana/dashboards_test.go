package grafana

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	influxdb2 "github.com/influxdata/influxdb-client-go/v2"

	"github.com/drover-telemetry/drover/alerts"
	"github.com/drover-telemetry/drover/alerts/eval"
	"github.com/drover-telemetry/drover/internal/testenv"
	"github.com/drover-telemetry/drover/storagewriter/influx"
	"github.com/drover-telemetry/drover/telemetry"
)

// dashboard is the part of a Grafana dashboard the test reads.
type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []variable `json:"list"`
	} `json:"templating"`
	Annotations struct {
		List []struct {
			Name       string     `json:"name"`
			Datasource datasource `json:"datasource"`
			Query      string     `json:"query"` // InfluxQL
			TextColumn string     `json:"textColumn"`
		} `json:"list"`
	} `json:"annotations"`
}

type panel struct {
	ID         int        `json:"id"`
	Title      string     `json:"title"`
	Type       string     `json:"type"`
	Datasource datasource `json:"datasource"`
	Targets    []struct {
		RefID      string     `json:"refId"`
		Datasource datasource `json:"datasource"`
		RawQuery   bool       `json:"rawQuery"`
		Query      string     `json:"query"` // InfluxQL
		Expr       string     `json:"expr"`  // PromQL
	} `json:"targets"`
	Panels []panel `json:"panels"` // of a collapsed row
}

type variable struct {
	Name       string     `json:"name"`
	Type       string     `json:"type"`
	Query      string     `json:"query"`
	Datasource datasource `json:"datasource"`
	AllValue   string     `json:"allValue"`
	IncludeAll bool       `json:"includeAll"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// The data sources the dashboards use, as provisioned: InfluxDB (InfluxQL)
// for the telemetry, Prometheus for the pipeline's own metrics.
const (
	dsUID     = "drover-influxdb"
	promDSUID = "drover-prometheus"
)

func loadDashboards(t *testing.T) map[string]dashboard {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("dashboards", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no dashboards in grafana/dashboards (%v)", err)
	}
	out := map[string]dashboard{}
	uids := map[string]string{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d dashboard
		dec := json.NewDecoder(strings.NewReader(string(b)))
		if err := dec.Decode(&d); err != nil {
			t.Fatalf("%s: not a valid dashboard: %v", f, err)
		}
		if d.UID == "" || d.Title == "" || len(d.Panels) == 0 {
			t.Errorf("%s: want a uid, a title and panels", f)
		}
		if other, dup := uids[d.UID]; dup {
			t.Errorf("%s and %s share uid %q", f, other, d.UID)
		}
		uids[d.UID] = f
		out[f] = d
	}
	return out
}

// allPanels flattens rows.
func allPanels(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, allPanels(p.Panels)...)
	}
	return out
}

func TestProvisioningFiles(t *testing.T) {
	ds, err := os.ReadFile("provisioning/datasources/drover.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"uid: " + dsUID, "type: influxdb", "url: ${DROVER_INFLUX_URL}",
		"version: InfluxQL", "dbName: drover", "database: drover"} {
		if !strings.Contains(string(ds), want) {
			t.Errorf("datasources/drover.yaml lacks %q", want)
		}
	}
	dp, err := os.ReadFile("provisioning/dashboards/drover.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(dp), "path: ${DROVER_GRAFANA_DASHBOARDS}") {
		t.Errorf("dashboards/drover.yaml does not load from $DROVER_GRAFANA_DASHBOARDS")
	}
	prom, err := os.ReadFile("provisioning/datasources/prometheus.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"uid: " + promDSUID, "type: prometheus", "url: ${DROVER_PROMETHEUS_URL}"} {
		if !strings.Contains(string(prom), want) {
			t.Errorf("datasources/prometheus.yaml lacks %q", want)
		}
	}
	for _, f := range []string{"provisioning/datasources/drover.yaml", "provisioning/datasources/prometheus.yaml", "provisioning/dashboards/drover.yaml"} {
		b, _ := os.ReadFile(f)
		if strings.Contains(string(b), "\t") {
			t.Errorf("%s: YAML must not contain tabs", f)
		}
	}
}

func TestDashboardsUseTheProvisionedDatasource(t *testing.T) {
	for f, d := range loadDashboards(t) {
		for _, p := range allPanels(d.Panels) {
			if p.Type == "row" {
				continue
			}
			switch p.Datasource {
			case datasource{Type: "influxdb", UID: dsUID}, datasource{Type: "prometheus", UID: promDSUID}:
			default:
				t.Errorf("%s: panel %q: data source %+v, want uid %s or %s", f, p.Title, p.Datasource, dsUID, promDSUID)
			}
			if len(p.Targets) == 0 {
				t.Errorf("%s: panel %q has no query", f, p.Title)
			}
			for _, tg := range p.Targets {
				if tg.Datasource != p.Datasource {
					t.Errorf("%s: panel %q target %s: data source %+v, not the panel's", f, p.Title, tg.RefID, tg.Datasource)
				}
				switch p.Datasource.UID {
				case dsUID:
					if !tg.RawQuery || tg.Query == "" {
						t.Errorf("%s: panel %q target %s: want a raw InfluxQL query", f, p.Title, tg.RefID)
					}
				case promDSUID:
					if tg.Expr == "" || len(promMetricNames(tg.Expr)) == 0 {
						t.Errorf("%s: panel %q target %s: want a PromQL expr over drover_ metrics, got %q", f, p.Title, tg.RefID, tg.Expr)
					}
				}
			}
		}
		for _, v := range d.Templating.List {
			if v.Type == "query" && v.Datasource.UID != dsUID && v.Datasource.UID != promDSUID {
				t.Errorf("%s: variable %s: data source %+v", f, v.Name, v.Datasource)
			}
		}
	}
}

// interpolate does what Grafana's InfluxDB data source does to a query:
// $timeFilter becomes a time range in epoch milliseconds, $__interval and
// $interval an interval, and each template variable its value, regex-escaped
// (a multi-value selection becomes (a|b)), or the variable's allValue for
// "All". It fails the test if a $ is left over: a typo, or a variable that does not
// exist (and leaves it: InfluxDB then refuses the query too).
func interpolate(t *testing.T, q string, vars map[string]string, from, to time.Time) string {
	t.Helper()
	r := []string{
		"$timeFilter", fmt.Sprintf("time >= %dms and time <= %dms", from.UnixMilli(), to.UnixMilli()),
		"$__interval_ms", "60000", "$__interval", "1m", "$interval", "1m",
	}
	names := make([]string, 0, len(vars))
	for n := range vars {
		names = append(names, n)
	}
	// Longest first, so that $device_class would not be eaten by $device.
	slices.SortFunc(names, func(a, b string) int { return len(b) - len(a) })
	for _, n := range names {
		r = append(r, "${"+n+"}", vars[n], "$"+n, vars[n])
	}
	out := strings.NewReplacer(r...).Replace(q)
	if m := regexp.MustCompile(`\$\{?\w+`).FindString(out); m != "" {
		t.Errorf("query %q: %s is no variable Grafana or the dashboard defines", q, m)
	}
	return out
}

// grafanaRegex formats selected values as Grafana does for InfluxQL regexes.
func grafanaRegex(values ...string) string {
	esc := make([]string, len(values))
	for i, v := range values {
		esc[i] = strings.ReplaceAll(regexp.QuoteMeta(v), "/", `\/`)
	}
	if len(esc) == 1 {
		return esc[0]
	}
	return "(" + strings.Join(esc, "|") + ")"
}

// TestDashboardQueriesRunOnInfluxDB is the real test that the dashboards
// work: a real InfluxDB 1.8 holds a small fleet written by drover's sink, and
// every variable and panel query runs against it, for "All" and for a single
// selection, and must succeed; with "All", every panel must show data, and
// the overheating counts must be right.
func TestDashboardQueriesRunOnInfluxDB(t *testing.T) {
	dashboards := loadDashboards(t)
	inf := testenv.InfluxD(t)
	now := time.Now()
	overheatingNow, overheatedEarlier := writeFleet(t, inf, now)
	from, to := now.Add(-6*time.Hour), now.Add(time.Minute)
	ctx := context.Background()

	for f, d := range dashboards {
		t.Run(filepath.Base(f), func(t *testing.T) {
			// Grafana resolves variables in order, each from the ones before.
			all := map[string]string{}
			one := map[string]string{}
			for _, v := range d.Templating.List {
				if v.Type != "query" || v.Datasource.UID != dsUID {
					continue
				}
				if v.IncludeAll && v.AllValue != ".*" {
					t.Errorf("variable %s: allValue %q, want .* (so that All is a short regex)", v.Name, v.AllValue)
				}
				tagValues := func(sel map[string]string) []string {
					series, err := inf.Exec(ctx, inf.Database, interpolate(t, v.Query, sel, from, to))
					if err != nil {
						t.Fatalf("variable %s: %v", v.Name, err)
					}
					var values []string
					for _, s := range series {
						for _, row := range s.Values {
							values = append(values, row[1].(string)) // SHOW TAG VALUES: key, value
						}
					}
					if len(values) == 0 {
						t.Fatalf("variable %s has no values (selection %v)", v.Name, sel)
					}
					return values
				}
				if v.IncludeAll {
					tagValues(all)
					all[v.Name] = v.AllValue
				} else {
					// A variable without "All" (one vehicle): Grafana
					// starts on its first value.
					all[v.Name] = grafanaRegex(tagValues(all)[0])
				}
				// The single selection: the first value given the ones before.
				one[v.Name] = grafanaRegex(tagValues(one)[0])
			}

			// Annotations (the alerts on the vehicle's panels): they run,
			// and find the alerts, with the text column they name.
			for _, a := range d.Annotations.List {
				if a.Datasource.UID != dsUID {
					continue
				}
				for _, sel := range []map[string]string{all, one} {
					series, err := inf.Exec(ctx, inf.Database, interpolate(t, a.Query, sel, from, to))
					if err != nil {
						t.Errorf("annotation %s with %v: %v", a.Name, sel, err)
						continue
					}
					if countRows(series) == 0 {
						t.Errorf("annotation %s with %v: no alerts", a.Name, sel)
					}
					requireColumns(t, "annotation "+a.Name, series, a.TextColumn)
				}
			}

			queries := 0
			for _, p := range allPanels(d.Panels) {
				if p.Datasource.UID != dsUID {
					continue
				}
				for _, tg := range p.Targets {
					queries++
					name := fmt.Sprintf("panel %q target %s", p.Title, tg.RefID)
					series, err := inf.Exec(ctx, inf.Database, interpolate(t, tg.Query, all, from, to))
					if err != nil {
						t.Errorf("%s: %v", name, err)
						continue
					}
					if rows := countRows(series); rows == 0 {
						t.Errorf("%s: no data for All", name)
					}
					for _, col := range emptyColumns(series) {
						t.Errorf("%s: column %s has no value for All (a misspelt field?)", name, col)
					}
					if _, err := inf.Exec(ctx, inf.Database, interpolate(t, tg.Query, one, from, to)); err != nil {
						t.Errorf("%s with %v: %v", name, one, err)
					}
					// A multi-value selection parses too.
					multi := map[string]string{}
					for k := range all {
						multi[k] = grafanaRegex("fleet-a", "fleet/b", "x.y")
					}
					if _, err := inf.Exec(ctx, inf.Database, interpolate(t, tg.Query, multi, from, to)); err != nil {
						t.Errorf("%s with a multi-value selection: %v", name, err)
					}

					switch p.Title {
					case "Vehicles overheating now":
						if got := scalar(t, series); got != int64(overheatingNow) {
							t.Errorf("%s = %v, want %d", p.Title, got, overheatingNow)
						}
					case "Vehicles overheated in range":
						if got := scalar(t, series); got != int64(overheatingNow+overheatedEarlier) {
							t.Errorf("%s = %v, want %d", p.Title, got, overheatingNow+overheatedEarlier)
						}
					case "Vehicles reporting":
						if got := scalar(t, series); got != int64(fleetDevices) {
							t.Errorf("%s = %v, want %d", p.Title, got, fleetDevices)
						}
					case "Active vehicles (5 min)":
						if got := scalar(t, series); got != int64(fleetDevices) {
							t.Errorf("%s = %v, want %d", p.Title, got, fleetDevices)
						}
					case "Readings/s (5 min)":
						// Readings 51 to 59 of each vehicle are in the last 5 minutes.
						if got, ok := scalar(t, series).(float64); !ok || got != 9*fleetDevices/300.0 {
							t.Errorf("%s = %v, want %v", p.Title, got, 9*fleetDevices/300.0)
						}
					case "Latest position per device", "Last known positions":
						if len(series) != fleetDevices {
							t.Errorf("%s: %d devices, want %d", p.Title, len(series), fleetDevices)
						}
						requireColumns(t, p.Title, series, "lat", "lon")
					case "Route":
						requireColumns(t, p.Title, series, "lat", "lon")
						// One point per interval (1m in the test) with a fix:
						// 30 minutes of readings, minutes without a fix dropped.
						if rows := countRows(series); rows < 25 || rows > 31 {
							t.Errorf("%s: %d positions, want about 30", p.Title, rows)
						}
					case "Alerts":
						// One row per alert, whatever its events: the raised
						// and the cleared event write one point. The vehicle
						// dashboard shows one vehicle (dev-00: two alerts).
						want := fleetAlerts
						if strings.Contains(f, "vehicle") {
							want = 2
						}
						if rows := countRows(series); rows != want {
							t.Errorf("%s: %d rows, want the %d alerts", p.Title, rows, want)
						}
					case "Last known values":
						if len(series) != 1 || len(series[0].Values) != 1 {
							t.Errorf("%s: want one row, got %+v", p.Title, series)
						} else if n := len(series[0].Columns); n != 9 {
							t.Errorf("%s: %d columns, want time and 8 values", p.Title, n)
						}
					}
				}
			}
			if strings.Contains(f, "pipeline") {
				if queries != 0 {
					t.Errorf("pipeline dashboard has %d InfluxQL queries", queries)
				}
			} else if queries == 0 {
				t.Errorf("no InfluxQL query")
			}
		})
	}
}

// requireColumns fails unless every series has the columns (a Geomap layer
// finds its coordinates by these names).
func requireColumns(t *testing.T, title string, series []testenv.Series, cols ...string) {
	t.Helper()
	for _, s := range series {
		for _, c := range cols {
			if !slices.Contains(s.Columns, c) {
				t.Errorf("%s: no column %s in %v", title, c, s.Columns)
			}
		}
	}
}

func countRows(series []testenv.Series) int {
	n := 0
	for _, s := range series {
		n += len(s.Values)
	}
	return n
}

// emptyColumns lists the columns without a single non-null value.
func emptyColumns(series []testenv.Series) []string {
	var empty []string
	for _, s := range series {
	cols:
		for c, name := range s.Columns {
			for _, row := range s.Values {
				if row[c] != nil {
					continue cols
				}
			}
			if !slices.Contains(empty, name) {
				empty = append(empty, name)
			}
		}
	}
	return empty
}

// scalar is the single value of a one-row, one-value result.
func scalar(t *testing.T, series []testenv.Series) any {
	t.Helper()
	if len(series) != 1 || len(series[0].Values) != 1 || len(series[0].Values[0]) != 2 {
		t.Errorf("want one value, got %+v", series)
		return nil
	}
	return series[0].Values[0][1]
}

// fleetDevices is how many vehicles writeFleet writes.
const fleetDevices = 13

// writeFleet writes 30 minutes of readings, one every 30 s, of 13 vehicles
// through drover's InfluxDB sink: 12 in three fleets, classes and regions,
// one without enrichment. It returns how many are overheating now and how
// many overheated earlier in the time range only.
func writeFleet(t *testing.T, inf *testenv.Influx, now time.Time) (nowHot, earlierHot int) {
	t.Helper()
	cfg := influx.DefaultConfig()
	cfg.URL, cfg.Database = inf.URL, inf.Database
	s, err := influx.New(cfg, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())

	fleets := []string{"fleet-a", "fleet/b", "fleet-c"}
	classes := []string{"truck", "van", "bus"}
	regions := []string{"north", "south"}
	var recs []*telemetry.EnrichedRecord
	for dev := range fleetDevices {
		var en *telemetry.Enrichment
		if dev < fleetDevices-1 {
			en = &telemetry.Enrichment{Fleet: fleets[dev%3], VehicleClass: classes[dev/3%3], Region: regions[dev%2]}
		}
		for i := range 60 {
			at := now.Add(-30*time.Minute + time.Duration(i)*30*time.Second)
			temp := float32(85 + i%10)
			switch {
			case dev < 2 && i >= 55: // devices 0 and 1: hot in the last minutes
				temp = 110
			case dev == 2 && i == 10: // device 2: hot 25 minutes ago, fine since
				temp = 108
			}
			r := &telemetry.Reading{
				Seq:                  uint64(i + 1),
				TimeMs:               at.UnixMilli(),
				SpeedKmh:             ptr(float32(40 + dev + i%20)),
				EngineTempC:          ptr(temp),
				EngineRpm:            ptr(float32(1200 + 10*i)),
				FuelLevelPct:         ptr(float32(80 - i/2)),
				BatteryVoltageV:      ptr(float32(27.5)),
				PneumaticPressureKpa: ptr(float32(800 + dev)),
				HeadingDeg:           ptr(float32(90)),
				OdometerKm:           ptr(float64(100_000 + dev*1000 + i)),
				Ignition:             ptr(true),
			}
			if i%7 != 3 { // some readings without a fix
				r.SetPosition(45+float64(dev)/100, 4.8+float64(i)/1000)
			}
			recs = append(recs, &telemetry.EnrichedRecord{
				Record:     &telemetry.Record{DeviceId: fmt.Sprintf("dev-%02d", dev), ReceivedMs: at.UnixMilli() + 300, Reading: r},
				Enrichment: en,
			})
		}
	}
	if err := s.Write(context.Background(), recs); err != nil {
		t.Fatalf("write the fleet: %v", err)
	}
	writeAlerts(t, inf, now)
	return 2, 1
}

// fleetAlerts is how many alerts writeAlerts writes.
const fleetAlerts = 4

// writeAlerts writes alerts of the first vehicles as the alert engine
// does (alerts.InfluxPoint): an overheat raised then cleared, a harsh
// braking, a geofence entry (late), and an overspeed under way.
func writeAlerts(t *testing.T, inf *testenv.Influx, now time.Time) {
	t.Helper()
	at := func(min int) int64 { return now.Add(time.Duration(min) * time.Minute).UnixMilli() }
	alert := func(typ, dev, fleet, state string, start int64) eval.Alert {
		a := eval.Alert{ID: eval.AlertID(typ, "", dev, start), Type: typ, Rule: "default", Device: dev, Fleet: fleet,
			Severity: eval.Major, State: state, StartMs: start, RaisedMs: start + 30_000, Value: 111, Peak: 114, Threshold: 105,
			Message: dev + ": " + typ, HasPos: true, Lat: 45, Lon: 4.8}
		if state == eval.StateCleared {
			a.EndMs, a.DurationMs = start+120_000, 120_000
		}
		return a
	}
	heat := alert(eval.TypeOverheat, "dev-00", "fleet-a", eval.StateActive, at(-5))
	heatDone := heat
	heatDone.State, heatDone.EndMs, heatDone.DurationMs = eval.StateCleared, heat.StartMs+120_000, 120_000
	enter := alert(eval.TypeGeofenceEnter, "dev-01", "fleet/b", eval.StateCleared, at(-20))
	enter.Fence, enter.Late, enter.Severity = "depot", true, eval.Info
	events := []eval.Event{
		{Kind: eval.EventRaised, Alert: heat},
		{Kind: eval.EventCleared, Alert: heatDone},
		{Kind: eval.EventInstant, Alert: alert(eval.TypeHarshBrake, "dev-00", "fleet-a", eval.StateCleared, at(-12))},
		{Kind: eval.EventInstant, Alert: enter},
		{Kind: eval.EventRaised, Alert: alert(eval.TypeOverspeed, "dev-02", "fleet-c", eval.StateActive, at(-2))},
	}
	c := influxdb2.NewClient(inf.URL, "")
	defer c.Close()
	w := c.WriteAPIBlocking("-", inf.Database)
	for i := range events {
		if err := w.WritePoint(context.Background(), alerts.InfluxPoint("alerts", &events[i])); err != nil {
			t.Fatalf("write alerts: %v", err)
		}
	}
}

func ptr[T any](v T) *T { return &v }
