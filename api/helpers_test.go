package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/internal/testenv"
)

func TestMain(m *testing.M) {
	openapi3filter.RegisterBodyDecoder("application/x-ndjson", ndjsonDecoder)
	openapi3filter.RegisterBodyDecoder("text/event-stream", func(body io.Reader, _ http.Header, _ *openapi3.SchemaRef, _ openapi3filter.EncodingFn) (any, error) {
		b, err := io.ReadAll(body)
		return string(b), err
	})
	code := m.Run()
	testenv.StopPostgres()
	os.Exit(code)
}

// ndjsonDecoder reads an NDJSON body as an array, for the validator.
func ndjsonDecoder(body io.Reader, _ http.Header, _ *openapi3.SchemaRef, _ openapi3filter.EncodingFn) (any, error) {
	var out []any
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var v any
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, sc.Err()
}

// backend is one storage backend the whole suite runs against.
type backend struct {
	name  string
	setup func(t testing.TB, cfg *Config)
}

var backends = []backend{
	{"sqlite", func(t testing.TB, cfg *Config) {}},
	{"postgres", func(t testing.TB, cfg *Config) {
		cfg.Driver = DriverPostgres
		cfg.PostgresURL = testenv.Postgres(t).NewDatabase(t)
	}},
}

// forEachBackend runs f as a subtest per backend: THE SAME tests against
// SQLite and a real PostgreSQL.
func forEachBackend(t *testing.T, f func(t *testing.T, b backend)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) { f(t, b) })
	}
}

// openTestStore opens a store of backend b, without a server, closed at
// the test's end.
func openTestStore(t *testing.T, b backend) *store {
	t.Helper()
	cfg := DefaultConfig()
	cfg.DataDir = t.TempDir()
	b.setup(t, &cfg)
	db, err := openStore(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.close)
	return db
}

// env is a running api server and a validated client.
type env struct {
	t        testing.TB
	srv      *Server
	cfg      Config
	base     string
	adminKey string
	client   *http.Client
	reg      *prometheus.Registry
}

// startEnv starts a server with backend b; mod may change the config.
func startEnv(t testing.TB, b backend, mod ...func(*Config)) *env {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	cfg.FeedPoll = 20 * time.Millisecond
	b.setup(t, &cfg)
	for _, m := range mod {
		m(&cfg)
	}
	return runEnv(t, cfg)
}

func runEnv(t testing.TB, cfg Config) *env { return runEnvLog(t, cfg, nil) }

// runEnvLog is runEnv with the server's log (info and up) also written to
// logs.
func runEnvLog(t testing.TB, cfg Config, logs io.Writer) *env {
	t.Helper()
	reg := prometheus.NewRegistry()
	var w io.Writer = testWriter{t}
	level := slog.LevelWarn
	if logs != nil {
		w, level = io.MultiWriter(w, logs), slog.LevelInfo
	}
	logger := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
	srv, err := New(cfg, logger, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	select {
	case <-srv.Started():
	case err := <-done:
		cancel()
		t.Fatalf("api Run: %v", err)
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatal("api not started after 60s")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("api Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("api Run did not return 30s after cancel")
		}
	})
	e := &env{t: t, srv: srv, cfg: cfg, base: "http://" + srv.Addr(), reg: reg}
	key, err := os.ReadFile(filepath.Join(cfg.DataDir, "api-admin-key"))
	if cfg.BootstrapKeyFile != "" {
		key, err = os.ReadFile(cfg.BootstrapKeyFile)
	}
	if err == nil {
		e.adminKey = strings.TrimSpace(string(key))
	}
	e.client = &http.Client{Transport: newValidator(t, e.base, http.DefaultTransport), Timeout: 2 * time.Minute}
	return e
}

type testWriter struct{ t testing.TB }

// lockedBuffer is a bytes.Buffer for concurrent writers.
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

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Logf("%s", bytes.TrimRight(b, "\n"))
	return len(b), nil
}

// validator is an http.RoundTripper that checks every request and every
// answer against openapi.yaml and fails the test on any mismatch: the
// document stays true because every API test goes through it.
type validator struct {
	t      testing.TB
	router routers.Router
	next   http.RoundTripper
}

var (
	specOnce sync.Once
	specDoc  *openapi3.T
	specErr  error
)

func loadSpec() (*openapi3.T, error) {
	specOnce.Do(func() {
		loader := openapi3.NewLoader()
		specDoc, specErr = loader.LoadFromData(OpenAPIYAML)
		if specErr == nil {
			specErr = specDoc.Validate(context.Background())
		}
	})
	return specDoc, specErr
}

func newValidator(t testing.TB, base string, next http.RoundTripper) *validator {
	t.Helper()
	doc, err := loadSpec()
	if err != nil {
		t.Fatalf("openapi.yaml: %v", err)
	}
	// A copy with this server's URL: the router matches servers.
	cp := *doc
	cp.Servers = openapi3.Servers{{URL: base}}
	r, err := legacy.NewRouter(&cp)
	if err != nil {
		t.Fatalf("openapi router: %v", err)
	}
	return &validator{t: t, router: r, next: next}
}

// ctxSkipRequestCheck marks a request that is invalid on purpose (the test
// checks the API refuses it): only its answer is validated.
type ctxSkipRequestCheck struct{}

func (v *validator) RoundTrip(req *http.Request) (*http.Response, error) {
	var reqBody []byte
	if req.Body != nil {
		reqBody, _ = io.ReadAll(req.Body)
		req.Body.Close()
		req.Body = io.NopCloser(bytes.NewReader(reqBody))
	}
	route, params, err := v.router.FindRoute(req)
	if err != nil {
		v.t.Errorf("openapi: %s %s: not in openapi.yaml: %v", req.Method, req.URL.Path, err)
		return v.next.RoundTrip(req)
	}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, IncludeResponseStatus: true}}
	if req.Context().Value(ctxSkipRequestCheck{}) == nil {
		if err := openapi3filter.ValidateRequest(req.Context(), in); err != nil {
			v.t.Errorf("openapi: request %s %s does not match openapi.yaml: %v", req.Method, req.URL, err)
		}
		req.Body = io.NopCloser(bytes.NewReader(reqBody))
	}
	resp, err := v.next.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header,
		Options: in.Options}
	out.SetBodyBytes(body)
	if err := openapi3filter.ValidateResponse(req.Context(), out); err != nil {
		v.t.Errorf("openapi: answer %d to %s %s does not match openapi.yaml: %v\nbody: %.2000s", resp.StatusCode, req.Method, req.URL, err, body)
	}
	return resp, nil
}

// resp is an answer, read.
type resp struct {
	status int
	header http.Header
	body   []byte
}

func (r resp) json(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %d answer: %v\n%s", r.status, err, r.body)
	}
}

// errCode is the code of an error answer.
func (r resp) errCode() string {
	var e struct{ Code string }
	_ = json.Unmarshal(r.body, &e)
	return e.Code
}

// req is a request to build: call.
type req struct {
	method, path string
	key          string
	body         any // marshalled as JSON unless []byte or string
	contentType  string
	header       map[string]string
	invalid      bool // the request breaks openapi.yaml on purpose
}

// do sends r with the client (validated) and returns the answer.
func (e *env) do(r req) resp {
	e.t.Helper()
	var body io.Reader
	ct := r.contentType
	switch b := r.body.(type) {
	case nil:
	case []byte:
		body = bytes.NewReader(b)
	case string:
		body = strings.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		body = bytes.NewReader(j)
		if ct == "" {
			ct = "application/json"
		}
	}
	if body != nil && ct == "" {
		ct = "application/json"
	}
	ctx := context.Background()
	if r.invalid {
		ctx = context.WithValue(ctx, ctxSkipRequestCheck{}, true)
	}
	hr, err := http.NewRequestWithContext(ctx, r.method, e.base+r.path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	if ct != "" {
		hr.Header.Set("Content-Type", ct)
	}
	if r.key != "" {
		hr.Header.Set("Authorization", "Bearer "+r.key)
	}
	for k, v := range r.header {
		hr.Header.Set(k, v)
	}
	res, err := e.client.Do(hr)
	if err != nil {
		e.t.Fatalf("%s %s: %v", r.method, r.path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatalf("%s %s: read: %v", r.method, r.path, err)
	}
	return resp{status: res.StatusCode, header: res.Header, body: b}
}

// must sends r and fails the test unless the status is want; it decodes
// the answer into out when out is not nil.
func (e *env) must(want int, r req, out any) resp {
	e.t.Helper()
	res := e.do(r)
	if res.status != want {
		e.t.Fatalf("%s %s: status %d, want %d: %s", r.method, r.path, res.status, want, res.body)
	}
	if out != nil {
		res.json(e.t, out)
	}
	return res
}

// makeFleet creates a fleet (as the bootstrap admin).
func (e *env) makeFleet(id string) {
	e.t.Helper()
	e.must(201, req{method: "POST", path: "/v1/fleets", key: e.adminKey, body: map[string]string{"id": id}}, nil)
}

// makeOperator creates an operator with role and fleets and returns a key
// of it.
func (e *env) makeOperator(name, role string, fleets ...string) (opID, key string) {
	e.t.Helper()
	var op Operator
	e.must(201, req{method: "POST", path: "/v1/operators", key: e.adminKey,
		body: map[string]any{"name": name, "role": role, "fleets": fleets}}, &op)
	var k APIKey
	e.must(201, req{method: "POST", path: "/v1/operators/" + op.ID + "/keys", key: e.adminKey, body: map[string]any{"name": "test"}}, &k)
	return op.ID, k.Key
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

var _ = fmt.Sprintf
