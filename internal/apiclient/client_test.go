package apiclient_test

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/api"
	"github.com/drover-telemetry/drover/internal/apiclient"
	"github.com/drover-telemetry/drover/internal/tlsserve/tlstest"
)

// TestValidate: the follower's key never crosses a network in clear, and a
// configuration that cannot work is refused at start with its reason.
func TestValidate(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		cfg  apiclient.Config
		want string // "" for valid
	}{
		{apiclient.Config{}, ""},
		{apiclient.Config{URL: "https://api.example.com:8090", Key: "k"}, ""},
		{apiclient.Config{URL: "http://127.0.0.1:8090", Key: "k"}, ""},
		{apiclient.Config{URL: "http://[::1]:8090/", KeyFile: "/x"}, ""},
		{apiclient.Config{URL: "http://localhost:8090", Key: "k"}, ""},
		{apiclient.Config{URL: "http://10.0.0.5:8090", Key: "k"}, "plain http only to a loopback"},
		{apiclient.Config{URL: "http://api.example.com", Key: "k"}, "plain http only to a loopback"},
		{apiclient.Config{URL: "ftp://127.0.0.1", Key: "k"}, "want https://"},
		{apiclient.Config{URL: "https://api.example.com/v1", Key: "k"}, "base URL"},
		{apiclient.Config{URL: "https://user:pw@api.example.com", Key: "k"}, "base URL"},
		{apiclient.Config{URL: "https://api.example.com"}, "no key"},
		{apiclient.Config{URL: "https://api.example.com", Key: "k", CAFile: ca}, "no PEM certificate"},
		{apiclient.Config{URL: "https://api.example.com", Key: "k", CAFile: filepath.Join(dir, "none")}, "registry-api-ca-file"},
	} {
		err := c.cfg.Validate()
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%+v: %v", c.cfg, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%+v: %v, want an error saying %q", c.cfg, err, c.want)
		}
	}
}

// TestClientAgainstAPI: against a real API, the client reads the key file
// at each request (drover all's API writes it after the follower is
// built), reports a refused key as Refused, and a since beyond the
// database as ErrResync.
func TestClientAgainstAPI(t *testing.T) {
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	keyFile := filepath.Join(dir, "follower-key")
	c, err := apiclient.New(apiclient.Config{URL: "http://" + addr, KeyFile: keyFile, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := c.Changes(ctx, 0, 0, 10); err == nil || apiclient.Refused(err) {
		t.Fatalf("before the API and its key exist: %v", err)
	}

	cfg := api.DefaultConfig()
	cfg.Listen, cfg.DataDir, cfg.FollowerKeyFile = addr, dir, keyFile
	srv, err := api.New(cfg, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- srv.Run(rctx) }()
	defer func() { cancel(); <-done }()
	<-srv.Started()

	ch, err := c.Changes(ctx, 0, 0, 10)
	if err != nil || ch.Feed == "" {
		t.Fatalf("with the key file written by the API: %+v, %v", ch, err)
	}
	body, err := c.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(body)
	body.Close()
	if !strings.Contains(string(b), `"end"`) {
		t.Errorf("snapshot %q", b)
	}
	if _, err := c.Changes(ctx, 1<<40, 0, 10); !errors.Is(err, apiclient.ErrResync) {
		t.Errorf("since beyond the database: %v, want ErrResync", err)
	}
	if err := os.WriteFile(keyFile, []byte("drv_key_nope_nope\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Changes(ctx, 0, 0, 10); !apiclient.Refused(err) {
		t.Errorf("with a wrong key: %v, want Refused", err)
	}
}

// TestClientTLS: against an API serving HTTPS, the follower trusts the
// certificate given by -registry-api-ca-file, and refuses the connection
// without it (its key never goes to an unverified server).
func TestClientTLS(t *testing.T) {
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
	keyFileF := filepath.Join(dir, "follower-key")
	cfg := api.DefaultConfig()
	cfg.Listen, cfg.DataDir, cfg.FollowerKeyFile, cfg.TLSCert, cfg.TLSKey = addr, dir, keyFileF, certFile, keyFile
	srv, err := api.New(cfg, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() { cancel(); <-done }()
	<-srv.Started()

	trusting, err := apiclient.New(apiclient.Config{URL: "https://" + addr, KeyFile: keyFileF, CAFile: caFile})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := trusting.Changes(ctx, 0, 0, 1); err != nil {
		t.Fatalf("with the API's CA: %v", err)
	}
	blind, err := apiclient.New(apiclient.Config{URL: "https://" + addr, KeyFile: keyFileF})
	if err != nil {
		t.Fatal(err)
	}
	var unknown x509.UnknownAuthorityError
	if _, err := blind.Changes(ctx, 0, 0, 1); !errors.As(err, &unknown) {
		t.Errorf("without the API's CA: %v, want an unknown authority", err)
	}
}
