package livefeed

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/drover-telemetry/drover/internal/auth"
)

// logBuffer is a log destination tests can read while the feed writes.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

// refusal dials with token and returns the HTTP status and body of the
// refusal, failing the test if the connection is accepted.
func refusal(t *testing.T, rf *running, token string) (int, string, http.Header) {
	t.Helper()
	ws, resp, err := dialRaw(rf, token, nil)
	if err == nil {
		ws.Close()
		t.Fatalf("token %q accepted", token)
	}
	if resp == nil {
		t.Fatalf("dial: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func writeClientEntries(t *testing.T, entries ...ClientEntry) string {
	t.Helper()
	path := t.TempDir() + "/clients.json"
	if err := WriteClientsFile(path, entries); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestExpiredTokenRefused(t *testing.T) {
	pub := newPublisher(t, "r0")
	clients := writeClientEntries(t,
		ClientEntry{Name: "old", TokenSHA256: HashToken("token-old"), Fleets: []string{"*"}, Expires: time.Now().Add(-time.Minute)},
		ClientEntry{Name: "new", TokenSHA256: HashToken("token-new"), Fleets: []string{"*"}, Expires: time.Now().Add(time.Hour)},
	)
	rf := startFeed(t, func(c *Config) { c.Clients, c.DevToken = clients, "" }, pub)
	code, body, h := refusal(t, rf, "token-old")
	if code != http.StatusUnauthorized || body != "token expired\n" {
		t.Fatalf("expired token: HTTP %d %q, want 401 token expired", code, body)
	}
	if h.Get("WWW-Authenticate") == "" {
		t.Error("no WWW-Authenticate")
	}
	if got := testutil.ToFloat64(rf.m.refusals.WithLabelValues(reasonExpired)); got != 1 {
		t.Errorf("refusals{expired} = %v, want 1", got)
	}
	dial(t, rf, "token-new") // a token that expires later works until then
}

// A client connected with a token that expires is closed with 4004 when it
// does, and the token is refused from then on. A reload that moves the
// expiry moves the close.
func TestTokenExpiresWhileConnected(t *testing.T) {
	pub := newPublisher(t, "r0")
	soon := time.Now().Add(1500 * time.Millisecond)
	later := time.Now().Add(time.Hour)
	clients := writeClientEntries(t,
		ClientEntry{Name: "soon", TokenSHA256: HashToken("token-soon"), Fleets: []string{"*"}, Expires: soon},
		ClientEntry{Name: "moved", TokenSHA256: HashToken("token-moved"), Fleets: []string{"*"}, Expires: later},
	)
	rf := startFeed(t, func(c *Config) { c.Clients, c.DevToken = clients, "" }, pub)
	c := dial(t, rf, "token-soon")
	moved := dial(t, rf, "token-moved")
	c.subscribe(subscribeMsg{})
	moved.subscribe(subscribeMsg{})

	// Bring the second token's expiry forward by rewriting the file.
	if err := WriteClientsFile(clients, []ClientEntry{
		{Name: "soon", TokenSHA256: HashToken("token-soon"), Fleets: []string{"*"}, Expires: soon},
		{Name: "moved", TokenSHA256: HashToken("token-moved"), Fleets: []string{"*"}, Expires: time.Now().Add(time.Second)},
	}); err != nil {
		t.Fatal(err)
	}
	if code := c.closeCode(10 * time.Second); code != CloseExpired {
		t.Fatalf("close code %d, want %d (CloseExpired)", code, CloseExpired)
	}
	if time.Now().Before(soon) {
		t.Fatal("closed before the token expired")
	}
	if code := moved.closeCode(10 * time.Second); code != CloseExpired {
		t.Fatalf("token whose expiry a reload brought forward: close code %d, want %d", code, CloseExpired)
	}
	waitFor(t, 5*time.Second, "disconnects{expired} = 2", func() bool {
		return testutil.ToFloat64(rf.m.disconnects.WithLabelValues(reasonExpired)) == 2
	})
	if code, _, _ := refusal(t, rf, "token-soon"); code != http.StatusUnauthorized {
		t.Fatalf("expired token on reconnect: HTTP %d, want 401", code)
	}
}

// Without a clients file, a dev token or -dev, the livefeed refuses every
// client and says so at start; it never makes up a token.
func TestNoClientsAndNoDevRefusesEveryone(t *testing.T) {
	pub := newPublisher(t, "r0")
	var logs logBuffer
	rf := startFeedLogged(t, logs.logger(), func(c *Config) { c.DevToken, c.Dev = "", false }, pub)
	waitFor(t, 5*time.Second, "the warning", func() bool {
		return bytes.Contains([]byte(logs.String()), []byte("every client is refused"))
	})
	if regexp.MustCompile(`token=[0-9a-f]{32}`).MatchString(logs.String()) {
		t.Fatalf("a token was made up without -dev:\n%s", logs.String())
	}
	for _, tok := range []string{"", "anything", devToken} {
		if code, _, _ := refusal(t, rf, tok); code != http.StatusUnauthorized {
			t.Errorf("token %q: HTTP %d, want 401", tok, code)
		}
	}
}

// With -dev and nothing else, a made-up token that sees every fleet is
// logged with the map's URL, and works.
func TestDevMakesUpALoggedToken(t *testing.T) {
	pub := newPublisher(t, "r0")
	var logs logBuffer
	rf := startFeedLogged(t, logs.logger(), func(c *Config) { c.DevToken, c.Dev = "", true }, pub)
	re := regexp.MustCompile(`\?token=([0-9a-f]{32})`)
	var tok string
	waitFor(t, 5*time.Second, "the map URL with the token", func() bool {
		if m := re.FindStringSubmatch(logs.String()); m != nil {
			tok = m[1]
		}
		return tok != ""
	})
	c := dial(t, rf, tok)
	c.subscribe(subscribeMsg{}) // answered: the token works
}

func TestClientAuthFailuresBlockThenRelease(t *testing.T) {
	pub := newPublisher(t, "r0")
	rf := startFeed(t, func(c *Config) {
		c.AuthLimit = auth.LimitConfig{Failures: 3, Window: time.Minute, Block: time.Second, MaxBlock: time.Second, MaxKeys: 1024}
	}, pub)
	for range 3 {
		if code, _, _ := refusal(t, rf, "guess"); code != http.StatusUnauthorized {
			t.Fatalf("HTTP %d, want 401", code)
		}
	}
	code, _, h := refusal(t, rf, devToken)
	if code != http.StatusTooManyRequests {
		t.Fatalf("good token from a blocked address: HTTP %d, want 429", code)
	}
	if n, err := strconv.Atoi(h.Get("Retry-After")); err != nil || n != 1 {
		t.Fatalf("Retry-After %q, want 1", h.Get("Retry-After"))
	}
	if got := testutil.ToFloat64(rf.m.refusals.WithLabelValues(reasonAuthLimit)); got != 1 {
		t.Fatalf("refusals{auth_rate_limit} = %v, want 1", got)
	}
	waitFor(t, 10*time.Second, "the address released", func() bool {
		ws, _, err := dialRaw(rf, devToken, nil)
		if err == nil {
			ws.Close()
		}
		return err == nil
	})
}
