package main

import (
	"bytes"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/registry"

	"github.com/drover-telemetry/drover/internal/testenv"
)

func freeAddr(t *testing.T) string { return testenv.FreeAddr(t) }

// TestTargetsStartAndStopCleanly starts each long-running target of the real
// binary, waits for /readyz to answer 200, sends SIGTERM and expects a clean
// exit (status 0) within the shutdown deadline.
func TestTargetsStartAndStopCleanly(t *testing.T) {
	dir := t.TempDir()
	reg := filepath.Join(dir, "registry.json")
	if err := registry.Write(reg, []registry.Device{{ID: "d1", TokenSHA256: registry.HashToken("t")}}); err != nil {
		t.Fatal(err)
	}
	router := "tcp://" + freeAddr(t)
	key, err := clusterlink.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "cluster.key")
	if err := clusterlink.WriteKeyFile(keyFile, key); err != nil {
		t.Fatal(err)
	}
	// The livefeed is ready once subscribed to a router's live lane: give it
	// one to subscribe to, with the cluster key.
	live := "tcp://" + freeAddr(t)
	pub := zmq4.NewPub(t.Context())
	sec, err := clusterlink.New(clusterlink.Config{Keys: []clusterlink.Key{key}}, clusterlink.RoleRouter, "test", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sec.Close()
	ep, err := sec.Endpoint(clusterlink.LinkLive, live)
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.Listen(ep); err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	// The frontend is ready once a router has answered its drainer: give it
	// one, running through the frontend's subtest.
	feRouter := "tcp://" + freeAddr(t)
	rops := freeAddr(t)
	rcmd := exec.Command(drover, "router", "-listen", feRouter, "-live-pub", "tcp://"+freeAddr(t), "-store-listen", "tcp://"+freeAddr(t),
		"-queue-dir", filepath.Join(dir, "fe-router"), "-cluster-key-file", keyFile, "-ops-listen", rops)
	if err := rcmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = rcmd.Process.Kill(); _ = rcmd.Wait() }()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if resp, err := http.Get("http://" + rops + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the frontend's router not ready in 30s")
		}
	}
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"router", []string{"router", "-listen", router, "-live-pub", "tcp://" + freeAddr(t), "-store-listen", "tcp://" + freeAddr(t), "-queue-dir", filepath.Join(dir, "router"), "-cluster-key-file", keyFile}},
		{"frontend", []string{"frontend", "-listen", freeAddr(t), "-routers", feRouter, "-queue-dir", filepath.Join(dir, "frontend"), "-registry", reg, "-cluster-key-file", keyFile}},
		{"livefeed", []string{"livefeed", "-listen", freeAddr(t), "-routers", live, "-dev", "-cluster-key-file", keyFile}},
		{"storage-writer", []string{"storage-writer", "-sink", "lake", "-routers", "tcp://" + freeAddr(t), "-queue-dir", filepath.Join(dir, "writer"), "-lake-dir", filepath.Join(dir, "lake"), "-cluster-key-file", keyFile}},
		{"api", []string{"api", "-listen", freeAddr(t), "-data-dir", filepath.Join(dir, "api")}},
		// Development mode: it runs, and says what it gives up.
		{"router", []string{"router", "-listen", "tcp://" + freeAddr(t), "-live-pub", "tcp://" + freeAddr(t), "-store-listen", "tcp://" + freeAddr(t), "-queue-dir", filepath.Join(dir, "router-insecure"), "-insecure-links"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ops := freeAddr(t)
			cmd := exec.Command(drover, append(tc.args, "-ops-listen", ops)...)
			cmd.Dir = dir
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			deadline := time.Now().Add(30 * time.Second)
			for {
				resp, err := http.Get("http://" + ops + "/readyz")
				if err == nil {
					resp.Body.Close()
					if resp.StatusCode == http.StatusOK {
						break
					}
				}
				select {
				case err := <-done:
					t.Fatalf("%s exited before ready: %v\n%s", tc.name, err, stderr.String())
				default:
				}
				if time.Now().After(deadline) {
					cmd.Process.Kill()
					t.Fatalf("%s not ready in 30s\n%s", tc.name, stderr.String())
				}
				time.Sleep(20 * time.Millisecond)
			}
			start := time.Now()
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("%s after SIGTERM: %v\n%s", tc.name, err, stderr.String())
				}
			case <-time.After(40 * time.Second):
				cmd.Process.Kill()
				t.Fatalf("%s did not stop within 40s of SIGTERM\n%s", tc.name, stderr.String())
			}
			if !strings.Contains(stderr.String(), "msg=stopped target="+tc.name) {
				t.Fatalf("%s: no clean-stop log line:\n%s", tc.name, stderr.String())
			}
			if tc.name == "api" {
				// The control plane has no ZeroMQ links.
				t.Logf("%s stopped %v after SIGTERM", tc.name, time.Since(start).Round(time.Millisecond))
				return
			}
			insecure := slices.Contains(tc.args, "-insecure-links")
			if warned := strings.Contains(stderr.String(), "cluster links are NOT authenticated"); warned != insecure {
				t.Errorf("%s: insecure-links warning logged %v, want %v:\n%s", tc.name, warned, insecure, stderr.String())
			}
			if secured := strings.Contains(stderr.String(), "cluster links: mutual TLS 1.3"); secured == insecure {
				t.Errorf("%s: TLS announced %v, want %v", tc.name, secured, !insecure)
			}
			t.Logf("%s stopped %v after SIGTERM", tc.name, time.Since(start).Round(time.Millisecond))
		})
	}
}
