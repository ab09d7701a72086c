package main

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/testenv"
)

// Every secret given as a flag is refused, with a message that names the
// environment variable and the file flag, and never repeats the secret.
func TestSecretFlagsRefusedOnCommandLine(t *testing.T) {
	const secret = "s3cret-on-the-command-line"
	for _, tc := range []struct {
		args      []string
		env, file string
	}{
		{[]string{"storage-writer", "-influx-token", secret}, "DROVER_STORAGE_WRITER_INFLUX_TOKEN", "-influx-token-file"},
		{[]string{"storage-writer", "-lake-azure-account-key", secret}, "DROVER_STORAGE_WRITER_LAKE_AZURE_ACCOUNT_KEY", "-lake-azure-account-key-file"},
		{[]string{"storage-writer", "-lake-azure-connection-string", secret}, "DROVER_STORAGE_WRITER_LAKE_AZURE_CONNECTION_STRING", "-lake-azure-connection-string-file"},
		{[]string{"livefeed", "-dev-token", secret}, "DROVER_LIVEFEED_DEV_TOKEN", "-dev-token-file"},
		{[]string{"all", "-livefeed.dev-token", secret}, "DROVER_ALL_LIVEFEED_DEV_TOKEN", "-livefeed.dev-token-file"},
		{[]string{"sim", "-token-seed", secret}, "DROVER_SIM_TOKEN_SEED", "-token-seed-file"},
		{[]string{"frontend", "-ops-token=" + secret}, "DROVER_FRONTEND_OPS_TOKEN", "-ops-token-file"},
		{[]string{"router", "-ops-token", secret}, "DROVER_ROUTER_OPS_TOKEN", "-ops-token-file"},
	} {
		r := runDrover(t, nil, tc.args...)
		if r.code != 2 {
			t.Errorf("drover %s: exit %d, want 2; stderr:\n%s", tc.args[0], r.code, r.stderr)
			continue
		}
		for _, want := range []string{"not taken on the command line", "$" + tc.env, tc.file} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("drover %q: stderr lacks %q:\n%s", tc.args, want, r.stderr)
			}
		}
		if strings.Contains(r.stderr+r.stdout, secret) {
			t.Errorf("drover %q repeats the secret:\n%s", tc.args, r.stderr)
		}
	}
}

// -h documents the secret flags and never shows a secret, even one set in
// the environment.
func TestHelpNeverShowsSecrets(t *testing.T) {
	const secret = "s3cret-in-the-environment"
	r := runDrover(t, []string{"DROVER_STORAGE_WRITER_INFLUX_TOKEN=" + secret, "DROVER_STORAGE_WRITER_OPS_TOKEN=" + secret},
		"storage-writer", "-h")
	if r.code != 0 || !strings.Contains(r.stdout, "-influx-token-file") || !strings.Contains(r.stdout, "$DROVER_STORAGE_WRITER_INFLUX_TOKEN") {
		t.Fatalf("exit %d; -h does not document the token:\n%s", r.code, r.stdout)
	}
	if strings.Contains(r.stdout+r.stderr, secret) {
		t.Fatalf("-h shows a secret:\n%s", r.stdout)
	}
}

// lockedBuffer collects a process's stderr while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func opsGet(t *testing.T, url, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// A real drover process given its secrets the ways it takes them (the
// environment, files) shows none of them in /debug/pprof/cmdline, in
// /metrics or in its debug logs; and its profiles ask for the ops token.
func TestSecretsStayOutOfCmdlineAndLogs(t *testing.T) {
	influx := testenv.InfluxD(t)
	dir := t.TempDir()
	const influxToken, devToken, opsToken = "influx-secret-0123456789", "dev-secret-0123456789", "ops-secret-0123456789"
	opsTokenFile := filepath.Join(dir, "ops-token")
	if err := os.WriteFile(opsTokenFile, []byte(opsToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	clusterKey, err := clusterlink.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	clusterKeyFile := filepath.Join(dir, "cluster.key")
	if err := clusterlink.WriteKeyFile(clusterKeyFile, clusterKey); err != nil {
		t.Fatal(err)
	}
	secrets := []string{influxToken, devToken, opsToken, clusterlink.EncodeKey(clusterKey)}
	for _, tc := range []struct {
		name string
		args []string
		env  string
	}{
		{"storage-writer", []string{"storage-writer", "-sink", "influx", "-routers", "tcp://" + freeAddr(t),
			"-queue-dir", filepath.Join(dir, "writer"), "-influx-url", influx.URL, "-influx-database", influx.Database},
			"DROVER_STORAGE_WRITER_INFLUX_TOKEN=" + influxToken},
		{"livefeed", []string{"livefeed", "-listen", freeAddr(t), "-routers", "tcp://" + freeAddr(t)},
			"DROVER_LIVEFEED_DEV_TOKEN=" + devToken},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ops := freeAddr(t)
			cmd := exec.Command(drover, append(tc.args, "-ops-listen", ops, "-pprof", "-ops-token-file", opsTokenFile, "-log-level", "debug",
				"-cluster-key-file", clusterKeyFile)...)
			cmd.Dir = dir
			cmd.Env = append(os.Environ(), tc.env)
			var stderr lockedBuffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{}) // closed when the process has exited
			var waitErr error
			go func() { waitErr = cmd.Wait(); close(done) }()
			defer func() {
				select {
				case <-done:
				default:
					_ = cmd.Process.Kill()
					<-done
				}
			}()
			base := "http://" + ops
			deadline := time.Now().Add(30 * time.Second)
			for {
				if code, _ := opsGet(t, base+"/healthz", ""); code == http.StatusOK {
					break
				}
				select {
				case <-done:
					t.Fatalf("exited before serving: %v\n%s", waitErr, stderr.String())
				default:
				}
				if time.Now().After(deadline) {
					t.Fatalf("ops server not up in 30s\n%s", stderr.String())
				}
				time.Sleep(20 * time.Millisecond)
			}
			if code, _ := opsGet(t, base+"/debug/pprof/cmdline", ""); code != http.StatusUnauthorized {
				t.Errorf("/debug/pprof/cmdline without the ops token: HTTP %d, want 401", code)
			}
			code, cmdline := opsGet(t, base+"/debug/pprof/cmdline", opsToken)
			if code != http.StatusOK || !strings.Contains(cmdline, tc.name) {
				t.Fatalf("/debug/pprof/cmdline with the ops token: HTTP %d %q", code, cmdline)
			}
			code, metrics := opsGet(t, base+"/metrics", opsToken)
			if code != http.StatusOK {
				t.Fatalf("/metrics with the ops token: HTTP %d", code)
			}
			if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			select {
			case <-done:
			case <-time.After(40 * time.Second):
				t.Fatalf("no stop within 40s of SIGTERM\n%s", stderr.String())
			}
			logs := stderr.String()
			if !strings.Contains(logs, "ops server listening") {
				t.Fatalf("not the logs expected:\n%s", logs)
			}
			for _, s := range secrets {
				for where, text := range map[string]string{"cmdline": cmdline, "metrics": metrics, "logs": logs} {
					if strings.Contains(text, s) {
						t.Errorf("secret %q in %s:\n%s", s, where, text)
					}
				}
			}
		})
	}
}
