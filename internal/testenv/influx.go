package testenv

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// InfluxDatabase is the database [InfluxD] creates.
const InfluxDatabase = "drover"

// modulePath is drover's module path, to recognise the module root.
const modulePath = "github.com/drover-telemetry/drover"

// influxdInstallHint says how to get influxd; skips and failures quote it.
const influxdInstallHint = "run scripts/install-influxd.sh (builds InfluxDB 1.8.10 into .tools/bin, ~1-2 min) " +
	"or set DROVER_INFLUXD to an influxd 1.8 binary"

// Influx is an influxd started for one test (or a test and its subtests).
type Influx struct {
	// URL is the HTTP API's base URL, http://127.0.0.1:PORT.
	URL string
	// Database is the database created at start, InfluxDatabase.
	Database string
	// Dir is the server's directory: config, meta, data and WAL.
	Dir string

	proc   *process // shared by the handles of one server
	client *http.Client
}

// process is a running influxd.
type process struct {
	cmd      *exec.Cmd
	out      *SyncBuffer
	exited   chan struct{} // closed when the process has exited
	waitErr  error         // set before exited is closed
	stopOnce sync.Once
}

// InfluxOption changes how [InfluxD] starts the server.
type InfluxOption func(*influxOptions)

type influxOptions struct {
	flux bool
	// host is the address influxd binds (default loopback).
	host string
	// data holds extra lines of the [data] section.
	data string
}

// WithFlux turns on Flux (/api/v2/query, what the v2 client's QueryAPI
// uses). It is off by default because it adds about 4 s to the server's start.
func WithFlux() InfluxOption { return func(o *influxOptions) { o.flux = true } }

// WithSeriesLimits sets the [data] limits max-values-per-tag and
// max-series-per-database (InfluxDB 1.8's defaults: 100,000 and 1,000,000;
// 0 means no limit), for tests of what the writer does when InfluxDB refuses
// points for its own limits.
func WithSeriesLimits(maxValuesPerTag, maxSeriesPerDatabase int) InfluxOption {
	return func(o *influxOptions) {
		o.data += fmt.Sprintf("  max-values-per-tag = %d\n  max-series-per-database = %d\n", maxValuesPerTag, maxSeriesPerDatabase)
	}
}

// WithHost binds influxd's HTTP API to host instead of loopback: the
// gateway of a podman network, so that containers on it reach the server
// (and nothing beyond this machine does). Its RPC port stays on loopback.
func WithHost(host string) InfluxOption { return func(o *influxOptions) { o.host = host } }

// InfluxD starts a fresh influxd on loopback (HTTP and RPC on random free
// ports, everything stored under t.TempDir(), usage reporting and the
// _internal monitor database off, logs at error level), waits until /ping
// answers, creates the database InfluxDatabase and stops the server when the
// test ends. A server starts in well under a second (without Flux): still,
// share one between subtests, with a database each ([Influx.WithDatabase])
// if they must not see each other's points.
//
// Without influxd, InfluxD fails the test when $CI is "true" and skips it
// otherwise, saying how to install it.
func InfluxD(t testing.TB, opts ...InfluxOption) *Influx {
	t.Helper()
	var o influxOptions
	for _, opt := range opts {
		opt(&o)
	}
	bin, err := InfluxDPath()
	if err != nil {
		missingInfluxD(t, err)
	}
	var errs []error
	// A port taken between our probe and influxd's bind fails the start:
	// try again with new ports.
	for attempt := 0; attempt < 3; attempt++ {
		inf, err := startInflux(t, bin, o)
		if err == nil {
			inf.CreateDatabase(t, InfluxDatabase)
			inf.Database = InfluxDatabase
			return inf
		}
		errs = append(errs, err)
	}
	t.Fatalf("testenv: start influxd: %v", errors.Join(errs...))
	return nil
}

// InfluxDPath returns the influxd to start: $DROVER_INFLUXD if set, else
// .tools/bin/influxd under the module root (found by walking up from the
// working directory). It fails if that file is not there.
func InfluxDPath() (string, error) {
	if p := os.Getenv("DROVER_INFLUXD"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("DROVER_INFLUXD=%s: %w", p, err)
		}
		return p, nil
	}
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	p := filepath.Join(root, ".tools", "bin", "influxd")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("influxd not found: %w", err)
	}
	return p, nil
}

// ModuleRoot returns the directory of drover's go.mod, walking up from the
// working directory.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find module root: %w", err)
	}
	for {
		if f, err := os.Open(filepath.Join(dir, "go.mod")); err == nil {
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				if fields := strings.Fields(sc.Text()); len(fields) == 2 && fields[0] == "module" && fields[1] == modulePath {
					f.Close()
					return dir, nil
				}
			}
			f.Close()
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("find module root: no go.mod of %s above the working directory", modulePath)
		}
		dir = parent
	}
}

var (
	skipWarning sync.Once
	stderr      io.Writer = os.Stderr // where the skip warning goes
)

// missingInfluxD fails (CI) or skips (elsewhere) a test that needs influxd.
func missingInfluxD(t testing.TB, err error) {
	t.Helper()
	msg := fmt.Sprintf("this test needs a real InfluxDB: %v; %s", err, influxdInstallHint)
	if os.Getenv("CI") == "true" {
		t.Fatalf("testenv: %s (CI=true: not skipping)", msg)
	}
	// t.Skip's message shows only with -v: say it on stderr too, once.
	skipWarning.Do(func() {
		fmt.Fprintf(stderr, "\n*** testenv: SKIPPING tests that need InfluxDB: %s ***\n\n", msg)
	})
	t.Skipf("SKIPPED (no influxd): %s", msg)
}

// influxConfig is influxd's configuration: loopback only, quiet, no usage
// reporting, no self-monitoring database, everything under dir.
const influxConfig = `reporting-disabled = true
bind-address = "%[2]s"

[meta]
  dir = "%[1]s/meta"
  logging-enabled = false

[data]
  dir = "%[1]s/data"
  wal-dir = "%[1]s/wal"
  query-log-enabled = false
  trace-logging-enabled = false
%[5]s
[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[continuous_queries]
  log-enabled = false

[http]
  bind-address = "%[3]s"
  log-enabled = false
  suppress-write-log = true
  flux-enabled = %[4]t
  pprof-enabled = false

[logging]
  level = "error"
  suppress-logo = true
`

func startInflux(t testing.TB, bin string, o influxOptions) (*Influx, error) {
	t.Helper()
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(t.TempDir(), "influxd")
	if err != nil {
		return nil, fmt.Errorf("make influxd dir: %w", err)
	}
	host := o.host
	if host == "" {
		host = "127.0.0.1"
	}
	httpAddr := net.JoinHostPort(host, strconv.Itoa(ports[0]))
	rpcAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1]))
	cfg := filepath.Join(dir, "influxdb.conf")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, influxConfig, dir, rpcAddr, httpAddr, o.flux, o.data), 0o644); err != nil {
		return nil, fmt.Errorf("write influxd config: %w", err)
	}

	// The client's 2 minutes: reading back 100,000 points took over 30 s
	// on a machine at a load of 30; callers' contexts bound their waits.
	inf := &Influx{
		URL:    "http://" + httpAddr,
		Dir:    dir,
		proc:   &process{out: &SyncBuffer{}, exited: make(chan struct{})},
		client: &http.Client{Timeout: 2 * time.Minute},
	}
	p := inf.proc
	cmd := exec.Command(bin, "run", "-config", cfg)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = p.out, p.out
	cmd.SysProcAttr = sysProcAttr()
	// No INFLUXDB_* variable of the caller's may change the configuration.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "INFLUXDB_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p.cmd = cmd
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		out := p.out.String() // before Stop, which adds shutdown noise
		inf.Stop()
		if t.Failed() && out != "" {
			t.Logf("testenv: influxd output:\n%s", out)
		}
	})
	if err := inf.waitReady(30 * time.Second); err != nil {
		inf.Stop()
		return nil, err
	}
	return inf, nil
}

// waitReady polls /ping until it answers 204, influxd exits or timeout passes.
func (i *Influx) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	c := &http.Client{Timeout: time.Second}
	for {
		resp, err := c.Get(i.URL + "/ping")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusNoContent {
				return nil
			}
		}
		select {
		case <-i.proc.exited:
			return fmt.Errorf("influxd exited before it was ready (%v):\n%s", i.proc.waitErr, i.proc.out.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("influxd not ready after %v (last: %v):\n%s", timeout, err, i.proc.out.String())
		}
	}
}

// Stop stops the server (SIGTERM, then SIGKILL after 10 s) and waits for it
// to exit; for tests of what happens when InfluxDB is down. It is called at
// cleanup too, and may be called more than once, from any handle of the
// server.
func (i *Influx) Stop() {
	p := i.proc
	p.stopOnce.Do(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
}

// Output returns what influxd printed so far (errors only: it logs at error level).
func (i *Influx) Output() string { return i.proc.out.String() }

// WithDatabase creates database name and returns a handle on the same
// server whose Database, Query and Write use it: subtests sharing a server
// keep their points apart this way.
func (i *Influx) WithDatabase(t testing.TB, name string) *Influx {
	t.Helper()
	i.CreateDatabase(t, name)
	return &Influx{URL: i.URL, Database: name, Dir: i.Dir, proc: i.proc, client: i.client}
}

// CreateDatabase creates database name (a no-op if it exists).
func (i *Influx) CreateDatabase(t testing.TB, name string) {
	t.Helper()
	if _, err := i.Exec(context.Background(), "", "CREATE DATABASE "+QuoteIdent(name)); err != nil {
		t.Fatalf("testenv: create database %s: %v", name, err)
	}
}

// Series is one series of an InfluxQL result.
type Series struct {
	Name    string            `json:"name"`
	Tags    map[string]string `json:"tags"`
	Columns []string          `json:"columns"`
	// Values are the rows. Numbers are int64 when InfluxDB printed them
	// without a fraction or exponent (integer fields, and float fields with an
	// integral value: compare with [Float]), float64 otherwise; times are
	// RFC 3339 strings with nanoseconds.
	Values [][]any `json:"values"`
}

// Query runs an InfluxQL statement against i.Database and returns the rows of
// every series of its result, one after another; it fails the test on error.
func (i *Influx) Query(t testing.TB, influxQL string) [][]any {
	t.Helper()
	var rows [][]any
	for _, s := range i.QuerySeries(t, influxQL) {
		rows = append(rows, s.Values...)
	}
	return rows
}

// QuerySeries runs an InfluxQL statement against i.Database and returns its
// series; it fails the test on error.
func (i *Influx) QuerySeries(t testing.TB, influxQL string) []Series {
	t.Helper()
	series, err := i.Exec(context.Background(), i.Database, influxQL)
	if err != nil {
		t.Fatalf("testenv: query %q: %v", influxQL, err)
	}
	return series
}

// Exec runs InfluxQL statements (separated by ';') through the v1 /query
// API in database db (empty for none) and returns the series of all results.
// Any statement's error is returned, naming the statement.
func (i *Influx) Exec(ctx context.Context, db, influxQL string) ([]Series, error) {
	form := url.Values{"q": {influxQL}}
	if db != "" {
		form.Set("db", db)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, i.URL+"/query", strings.NewReader(form.Encode()))
	if err != nil {
		return nil, fmt.Errorf("influx query: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := i.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("influx query: %w", err)
	}
	defer resp.Body.Close()
	var body struct {
		Results []struct {
			StatementID int      `json:"statement_id"`
			Series      []Series `json:"series"`
			Error       string   `json:"error"`
		} `json:"results"`
		Error string `json:"error"`
	}
	dec := json.NewDecoder(resp.Body)
	dec.UseNumber()
	if err := dec.Decode(&body); err != nil {
		return nil, fmt.Errorf("influx query: HTTP %s: decode answer: %w", resp.Status, err)
	}
	if body.Error != "" {
		return nil, fmt.Errorf("influx query: HTTP %s: %s", resp.Status, body.Error)
	}
	var series []Series
	var errs []error
	for _, r := range body.Results {
		if r.Error != "" {
			errs = append(errs, fmt.Errorf("statement %d: %s", r.StatementID, r.Error))
		}
		for _, s := range r.Series {
			for _, row := range s.Values {
				for k, v := range row {
					row[k] = number(v)
				}
			}
			series = append(series, s)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return series, fmt.Errorf("influx query: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return series, fmt.Errorf("influx query: HTTP %s", resp.Status)
	}
	return series, nil
}

// number turns a json.Number into int64 or float64.
func number(v any) any {
	n, ok := v.(json.Number)
	if !ok {
		return v
	}
	if i, err := n.Int64(); err == nil {
		return i
	}
	if f, err := n.Float64(); err == nil {
		return f
	}
	return string(n)
}

// Float returns a numeric query value as a float64 (false for non-numbers).
func Float(v any) (float64, bool) {
	switch n := v.(type) {
	case int64:
		return float64(n), true
	case float64:
		return n, true
	}
	return 0, false
}

// Write writes line protocol to i.Database through the v1 /write API, with
// nanosecond timestamps; it fails the test on error.
func (i *Influx) Write(t testing.TB, lineProtocol string) {
	t.Helper()
	u := i.URL + "/write?" + url.Values{"db": {i.Database}, "precision": {"ns"}}.Encode()
	resp, err := i.client.Post(u, "text/plain", strings.NewReader(lineProtocol))
	if err != nil {
		t.Fatalf("testenv: influx write: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		msg, _ := io.ReadAll(resp.Body)
		t.Fatalf("testenv: influx write: HTTP %s: %s", resp.Status, bytes.TrimSpace(msg))
	}
}

// QuoteIdent quotes an InfluxQL identifier (database, measurement, tag or
// field key) with double quotes.
func QuoteIdent(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// freePorts returns n distinct loopback ports free right now (freePort:
// below the ephemeral range).
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for len(ports) < n {
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		ports = append(ports, p)
	}
	return ports, nil
}

// SyncBuffer is a bytes.Buffer safe for concurrent writes and reads: a
// process's output, or a test's slog handler, read while it is written.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
