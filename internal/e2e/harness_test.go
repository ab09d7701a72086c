package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/testenv"
)

// droverBin is the binary under test, built once by TestMain.
var droverBin string

// runID is random per test process. Every component id and subscriber name
// carries it (see uid): tests of other packages, or other copies of this
// one, run at the same time on loopback ports that a killed process frees
// for a moment, and a component that reached a stranger's process under the
// same name (a frontend "frontend-1" at another test's router, a writer
// "lake" at another test's router) would make that process's deduplication
// or subscriber queue act on our data — lost from this test's view.
var runID string

// uid returns name made unique to this test process.
func uid(name string) string { return name + "-" + runID }

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "drover-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var rb [3]byte
	if _, err := rand.Read(rb[:]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	runID = hex.EncodeToString(rb[:])
	droverBin = filepath.Join(dir, "drover")
	build := exec.Command("go", "build", "-o", droverBin, "../../cmd/drover")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build drover:", err)
		os.Exit(1)
	}
	code := m.Run()
	removeTestImages()
	os.RemoveAll(dir)
	os.Exit(code)
}

// freeAddr returns a loopback address for a process of the test to listen
// on: testenv.FreeAddr, below the ephemeral range that outgoing
// connections take their ports from, never the same twice.
func freeAddr(t testing.TB) string { return testenv.FreeAddr(t) }

// clusterKeys holds the cluster key file of each running test.
var clusterKeys sync.Map // testing.TB → string

// clusterKeyFile returns the cluster key file shared by every process of
// the test t (newProc gives it to each process that has links), made on
// first use. A key per test also keeps a process of another test, which
// may redial a port this test now uses, out of this test's pipeline.
func clusterKeyFile(t testing.TB) string {
	if path, ok := clusterKeys.Load(t); ok {
		return path.(string)
	}
	key, err := clusterlink.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "cluster.key")
	if err := clusterlink.WriteKeyFile(path, key); err != nil {
		t.Fatal(err)
	}
	if prev, loaded := clusterKeys.LoadOrStore(t, path); loaded {
		return prev.(string)
	}
	t.Cleanup(func() { clusterKeys.Delete(t) })
	return path
}

// proc is one drover process: a target and its flags. It can be started
// again after a kill with the same flags (same queue, same ports).
type proc struct {
	t       testing.TB
	name    string
	bin     string // the binary to run; droverBin when empty
	args    []string
	opsAddr string
	logPath string

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{}
	status error
	starts int
}

// secretFile writes a secret to a file of the test's own and returns its
// path, for a -...-file flag: drover takes no secret on the command line.
func secretFile(t testing.TB, secret string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(path, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func newProc(t testing.TB, name, target string, args ...string) *proc {
	p := &proc{t: t, name: name, opsAddr: freeAddr(t)}
	p.args = append([]string{target, "-ops-listen", p.opsAddr, "-log-format", "text"}, args...)
	switch target {
	case "frontend", "router", "storage-writer", "livefeed", "alerts":
		if !slices.Contains(args, "-insecure-links") && !slices.Contains(args, "-cluster-key-file") {
			p.args = append(p.args, "-cluster-key-file", clusterKeyFile(t))
		}
	}
	p.logPath = filepath.Join(t.TempDir(), name+".log")
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			b, _ := os.ReadFile(p.logPath)
			// The whole log outlives the test's temp dir, for the post-mortem.
			keep := filepath.Join(artifactsDir(t), p.name+".log")
			if err := os.WriteFile(keep, b, 0o644); err == nil {
				t.Logf("%s: whole log kept in %s", p.name, keep)
			}
			lines := strings.Split(string(b), "\n")
			var loud []string // every error and warning, wherever it is
			for _, l := range lines {
				if strings.Contains(l, "level=ERROR") || strings.Contains(l, "level=WARN") {
					loud = append(loud, l)
				}
			}
			if len(loud) > 40 {
				loud = append(loud[:20], loud[len(loud)-20:]...)
			}
			if len(loud) > 0 {
				t.Logf("--- errors and warnings of %s ---\n%s", p.name, strings.Join(loud, "\n"))
			}
			if len(lines) > 60 {
				lines = lines[len(lines)-60:]
			}
			t.Logf("--- last lines of %s (%s) ---\n%s", p.name, p.logPath, strings.Join(lines, "\n"))
		}
	})
	return p
}

// artifactsDir is where a failed test keeps what it wants looked at:
// $DROVER_ARTIFACTS/<test>, or drover-e2e-artifacts/<test> in the system's
// temp dir.
func artifactsDir(t testing.TB) string {
	base := os.Getenv("DROVER_ARTIFACTS")
	if base == "" {
		base = filepath.Join(os.TempDir(), "drover-e2e-artifacts")
	}
	dir := filepath.Join(base, strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()))
	_ = os.MkdirAll(dir, 0o755)
	return dir
}

// start starts the process and waits until /readyz answers 200.
func (p *proc) start(ctx context.Context) {
	p.t.Helper()
	p.mu.Lock()
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		p.mu.Unlock()
		p.t.Fatal(err)
	}
	bin := droverBin
	if p.bin != "" {
		bin = p.bin
	}
	fmt.Fprintf(f, "=== start %d: %s %s\n", p.starts+1, bin, strings.Join(p.args, " "))
	cmd := exec.Command(bin, p.args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		p.mu.Unlock()
		p.t.Fatalf("start %s: %v", p.name, err)
	}
	p.starts++
	p.cmd = cmd
	done := make(chan struct{})
	p.done = done
	go func() {
		err := cmd.Wait()
		f.Close()
		p.mu.Lock()
		p.status = err
		p.mu.Unlock()
		close(done)
	}()
	p.mu.Unlock()
	p.waitReady(ctx, 30*time.Second)
}

func (p *proc) waitReady(ctx context.Context, timeout time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-p.done:
			p.t.Fatalf("%s exited before it was ready: %v (log %s)", p.name, p.status, p.logPath)
		default:
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.opsAddr+"/readyz", nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			p.t.Fatalf("%s not ready within %v: %v", p.name, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill9 kills the process with SIGKILL and waits for it to be gone.
func (p *proc) kill9() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

func (p *proc) kill() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-done:
	default:
		cmd.Process.Signal(syscall.SIGKILL)
		<-done
	}
}

// stop sends SIGTERM and waits for a clean exit within timeout.
func (p *proc) stop(timeout time.Duration) {
	p.t.Helper()
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(timeout):
		p.kill()
		p.t.Fatalf("%s did not stop within %v of SIGTERM", p.name, timeout)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.status != nil {
		p.t.Fatalf("%s exited with %v after SIGTERM (log %s)", p.name, p.status, p.logPath)
	}
}

// postMortem logs what a process that does not get where it should is
// doing: its drover_* metrics and the stacks of its goroutines (from its
// /debug/pprof), appended to its log file, which the test prints on failure.
func (p *proc) postMortem(ctx context.Context) {
	f, err := os.OpenFile(p.logPath, os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	for _, path := range []string{"/metrics", "/debug/pprof/goroutine?debug=2"} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.opsAddr+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			fmt.Fprintf(f, "=== post-mortem %s: %v\n", path, err)
			continue
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
		resp.Body.Close()
		fmt.Fprintf(f, "=== post-mortem %s\n", path)
		for _, l := range strings.Split(string(b), "\n") {
			if path != "/metrics" || strings.HasPrefix(l, "drover_") {
				fmt.Fprintln(f, l)
			}
		}
	}
	p.t.Logf("%s: post-mortem (metrics, goroutines) appended to %s", p.name, p.logPath)
}

// metrics scrapes the process's /metrics.
func (p *proc) metrics(ctx context.Context) (map[string]*dto.MetricFamily, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.opsAddr+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	return parser.TextToMetricFamilies(bufio.NewReader(io.LimitReader(resp.Body, 16<<20)))
}

// metricValue returns the value of the series of name whose labels include
// want, summed over matching series; ok is false if none matched.
func metricValue(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f, ok := fams[name]
	if !ok {
		return 0, false
	}
	var sum float64
	found := false
	for _, m := range f.GetMetric() {
		match := true
		for k, v := range want {
			has := false
			for _, l := range m.GetLabel() {
				if l.GetName() == k && l.GetValue() == v {
					has = true
				}
			}
			match = match && has
		}
		if !match {
			continue
		}
		found = true
		switch {
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Untyped != nil:
			sum += m.GetUntyped().GetValue()
		}
	}
	return sum, found
}

// waitFor polls cond every 50 ms until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
