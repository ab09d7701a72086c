package api

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/drover-telemetry/drover/internal/auth"
)

// TestUnauthorizedIsOneAnswer: no key, a malformed key, an unknown key id,
// a bad secret, a revoked key, an expired key and a disabled operator all
// get the same 401 body: nothing tells which ids exist. Metrics keep the
// reason.
func TestUnauthorizedIsOneAnswer(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		e := startEnv(t, b, func(c *Config) { c.AuthLimit.Failures = 1000 })
		e.makeFleet("f")
		opID, key := e.makeOperator("alice", RoleViewer, "f")
		keyID, _, _ := parseAPIKey(key)
		var short APIKey
		e.must(201, req{method: "POST", path: "/v1/operators/" + opID + "/keys", key: e.adminKey, body: map[string]any{"expires_in_seconds": 1}}, &short)
		_, revoked := e.makeOperator("bob", RoleViewer, "f")
		rid, _, _ := parseAPIKey(revoked)
		var bob listResponse[Operator]
		e.must(200, req{method: "GET", path: "/v1/operators", key: e.adminKey}, &bob)
		for _, o := range bob.Items {
			if o.Name == "bob" {
				e.must(204, req{method: "DELETE", path: "/v1/operators/" + o.ID + "/keys/" + rid, key: e.adminKey}, nil)
			}
		}
		_, disabledKey := e.makeOperator("carol", RoleViewer, "f")
		var ops listResponse[Operator]
		e.must(200, req{method: "GET", path: "/v1/operators", key: e.adminKey}, &ops)
		for _, o := range ops.Items {
			if o.Name == "carol" {
				e.must(200, req{method: "PATCH", path: "/v1/operators/" + o.ID, key: e.adminKey, body: map[string]any{"disabled": true}}, nil)
			}
		}
		e.must(200, req{method: "GET", path: "/v1/me", key: key}, nil)
		time.Sleep(1100 * time.Millisecond) // the short key expires
		cases := map[string]string{
			"no key":         "",
			"malformed":      "hunter2",
			"unknown id":     "drv_key_aaaaaaaaaaaaaaaa_" + strings.Repeat("x", 43),
			"bad secret":     "drv_" + keyID + "_" + strings.Repeat("x", 43),
			"revoked":        revoked,
			"expired":        short.Key,
			"disabled":       disabledKey,
			"bearer missing": "",
		}
		var first string
		for name, k := range cases {
			r := req{method: "GET", path: "/v1/devices", key: k}
			if name == "bearer missing" {
				r.key, r.header = "", map[string]string{"Authorization": key} // no "Bearer "
			}
			res := e.do(r)
			if res.status != 401 {
				t.Errorf("%s: %d %s", name, res.status, res.body)
				continue
			}
			if first == "" {
				first = string(res.body)
			}
			if string(res.body) != first {
				t.Errorf("%s: body %s differs from %s", name, res.body, first)
			}
		}
		for _, reason := range []string{"missing", "malformed", "unknown_key", "bad_secret", "revoked", "expired", "disabled"} {
			if testutil.ToFloat64(e.srv.metrics.authFailures.WithLabelValues(reason)) == 0 {
				t.Errorf("drover_api_auth_failures_total{reason=%q} not counted", reason)
			}
		}
	})
}

// TestAuthThrottle: past -auth-failures from one address, every request
// from it is refused with 429 and Retry-After — a valid key too, so a
// throttled attacker learns nothing — until the backoff passes; a key id
// under attack is refused from any address.
func TestAuthThrottle(t *testing.T) {
	e := startEnv(t, backends[0], func(c *Config) {
		c.AuthLimit.Failures, c.AuthLimit.Window, c.AuthLimit.Block, c.AuthLimit.MaxBlock = 3, time.Minute, 500*time.Millisecond, 2*time.Second
	})
	for i := range 3 {
		if r := e.do(req{method: "GET", path: "/v1/me", key: "drv_key_nope_" + strings.Repeat("y", 43)}); r.status != 401 {
			t.Fatalf("failure %d: %d", i, r.status)
		}
	}
	r := e.do(req{method: "GET", path: "/v1/me", key: e.adminKey})
	if r.status != 429 || r.errCode() != "too_many_requests" {
		t.Fatalf("a valid key from a throttled address: %d %s", r.status, r.body)
	}
	if ra, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || ra < 1 {
		t.Errorf("Retry-After %q", r.header.Get("Retry-After"))
	}
	if testutil.ToFloat64(e.srv.metrics.authFailures.WithLabelValues("throttled")) == 0 {
		t.Error("throttled requests not counted")
	}
	waitFor(t, 5*time.Second, "the backoff to pass", func() bool {
		return e.do(req{method: "GET", path: "/v1/me", key: e.adminKey}).status == 200
	})

	// The limiter alone: per key id from many addresses, and the block
	// doubling up to its maximum each time the key reaches the limit again
	// (internal/auth's semantics: a block resets the count).
	l := newAuthLimiter(Config{AuthLimit: auth.LimitConfig{Failures: 2, Window: time.Minute, Block: time.Second, MaxBlock: 4 * time.Second, MaxKeys: 1024}})
	now := time.Now()
	l.fail("10.0.0.1", "key_x", now)
	l.fail("10.0.0.2", "key_x", now)
	if _, ok := l.allow("10.0.0.3", "key_x", now); ok {
		t.Error("a key id failed from two addresses is still allowed from a third")
	}
	if _, ok := l.allow("10.0.0.3", "key_y", now); !ok {
		t.Error("another key from a clean address is refused")
	}
	var waits []time.Duration
	for range 4 {
		wait, _ := l.allow("10.0.0.9", "key_x", now)
		now = now.Add(wait)
		l.fail("10.0.0.9", "key_x", now)
		if _, ok := l.allow("10.0.0.9", "key_x", now); !ok {
			t.Fatal("one failure after a block ended blocks again")
		}
		l.fail("10.0.0.9", "key_x", now)
		w, _ := l.allow("10.0.0.9", "key_x", now)
		waits = append(waits, w)
	}
	if waits[0] != 2*time.Second || waits[1] != 4*time.Second || waits[2] != 4*time.Second || waits[3] != 4*time.Second {
		t.Errorf("backoffs %v, want doubling from 2s up to 4s", waits)
	}
}

// TestTLSReloadAndCORS: with -tls-cert/-tls-key the API speaks HTTPS, and a
// SIGHUP makes it serve a renewed certificate without a restart; CORS
// answers a browser's preflight for a configured origin only.
func TestTLSReloadAndCORS(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeCert(t, cert, key, "first")
	cfg := DefaultConfig()
	cfg.Listen, cfg.DataDir, cfg.TLSCert, cfg.TLSKey = "127.0.0.1:0", dir, cert, key
	cfg.CORSOrigins = []string{"https://ops.example.com"}
	e := runEnv(t, cfg)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, Timeout: 10 * time.Second}
	serial := func() string {
		resp, err := client.Get("https://" + e.srv.Addr() + "/v1/openapi.json")
		if err != nil {
			t.Fatalf("https: %v", err)
		}
		resp.Body.Close()
		return resp.TLS.PeerCertificates[0].Subject.CommonName
	}
	if cn := serial(); cn != "first" {
		t.Fatalf("certificate %q", cn)
	}
	writeCert(t, cert, key, "renewed")
	waitFor(t, 10*time.Second, "the renewed certificate after SIGHUP", func() bool {
		_ = syscall.Kill(os.Getpid(), syscall.SIGHUP)
		return serial() == "renewed"
	})
	// A broken pair keeps the one in force.
	if err := os.WriteFile(cert, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, before := e.srv.tls.Reloads()
	waitFor(t, 10*time.Second, "a failed reload", func() bool {
		_ = syscall.Kill(os.Getpid(), syscall.SIGHUP)
		_, failed := e.srv.tls.Reloads()
		return failed > before
	})
	if cn := serial(); cn != "renewed" {
		t.Errorf("after a broken reload: %q", cn)
	}

	preflight := func(origin string) http.Header {
		r, _ := http.NewRequest("OPTIONS", "https://"+e.srv.Addr()+"/v1/devices", nil)
		r.Header.Set("Origin", origin)
		r.Header.Set("Access-Control-Request-Method", "PATCH")
		r.Header.Set("Access-Control-Request-Headers", "authorization,if-match")
		resp, err := client.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.Header
	}
	if h := preflight("https://ops.example.com"); h.Get("Access-Control-Allow-Origin") != "https://ops.example.com" ||
		!strings.Contains(strings.ToLower(h.Get("Access-Control-Allow-Headers")), "if-match") {
		t.Errorf("preflight from the configured origin: %v", h)
	}
	if h := preflight("https://evil.example.com"); h.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("preflight from another origin allowed: %v", h)
	}
}

func writeCert(t *testing.T, certFile, keyFile, cn string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(k)
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestBootstrapKey: the first start writes an admin key to a 0600 file and
// never logs it; a second start on the same database creates nothing.
func TestBootstrapKey(t *testing.T) {
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.Listen, cfg.DataDir = "127.0.0.1:0", dir
	logs := &lockedBuffer{}
	e := runEnvLog(t, cfg, logs)
	path := filepath.Join(dir, "api-admin-key")
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("bootstrap key file: %v %v", st, err)
	}
	var me map[string]any
	e.must(200, req{method: "GET", path: "/v1/me", key: e.adminKey}, &me)
	if me["role"] != "admin" || jsonString(me["fleets"]) != `["*"]` {
		t.Errorf("bootstrap key is %v", me)
	}
	_, secret, _ := parseAPIKey(e.adminKey)
	if strings.Contains(logs.String(), secret) || !strings.Contains(logs.String(), path) {
		t.Errorf("log shows the key, or not the file:\n%s", logs.String())
	}
	// A second start on the same database creates no other admin and
	// leaves the file alone.
	e2 := runEnv(t, cfg)
	var ops listResponse[Operator]
	e2.must(200, req{method: "GET", path: "/v1/operators", key: e.adminKey}, &ops)
	if len(ops.Items) != 1 || e2.adminKey != e.adminKey {
		t.Errorf("after a second start: %d operators, key file changed: %v", len(ops.Items), e2.adminKey != e.adminKey)
	}
}

// TestSQLiteFileModes: the database and its WAL are the owner's only.
func TestSQLiteFileModes(t *testing.T) {
	e := startEnv(t, backends[0])
	e.makeFleet("f") // a write, so the WAL exists
	for _, name := range []string{"api.db", "api.db-wal"} {
		st, err := os.Stat(filepath.Join(e.cfg.DataDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", name, st.Mode().Perm())
		}
	}
}
