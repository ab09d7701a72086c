package frontend

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/drover-telemetry/drover/internal/auth"
)

// rawUpgrade sends a WebSocket upgrade request for device id with token
// over a fresh TCP connection, asks the server to close after answering,
// and returns the answer's bytes as they came off the wire.
func rawUpgrade(t *testing.T, addr, id, token string, extra ...string) []byte {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	req := "GET " + IngestPath + " HTTP/1.1\r\nHost: " + addr + "\r\n" +
		"Connection: close, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
		HeaderDevice + ": " + id + "\r\nAuthorization: Bearer " + token + "\r\n" +
		strings.Join(extra, "") + "\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// withoutDate drops the Date header, the one part of two answers that may
// rightly differ.
func withoutDate(b []byte) []byte {
	var out [][]byte
	for _, l := range bytes.SplitAfter(b, []byte("\r\n")) {
		if !bytes.HasPrefix(l, []byte("Date: ")) {
			out = append(out, l)
		}
	}
	return bytes.Join(out, nil)
}

// An unknown device and a known device with a bad token get the same
// answer, byte for byte apart from Date: nobody can enumerate device ids.
// The metrics still tell the two apart.
func TestUnauthorizedAnswerIsUniform(t *testing.T) {
	e := startWith(t, 4, nil)
	addr := e.f.Addr().String()
	unknown := rawUpgrade(t, addr, deviceID(99), "token-xxx")
	badToken := rawUpgrade(t, addr, deviceID(1), "token-xxx")
	if !bytes.HasPrefix(unknown, []byte("HTTP/1.1 401 ")) {
		t.Fatalf("unknown device answered:\n%s", unknown)
	}
	if a, b := withoutDate(unknown), withoutDate(badToken); !bytes.Equal(a, b) {
		t.Fatalf("answers differ:\nunknown device:\n%s\nbad token:\n%s", a, b)
	}
	if e.refusals(reasonUnknownDevice) != 1 || e.refusals(reasonBadToken) != 1 {
		t.Fatalf("refusals: unknown_device %v, bad_token %v; want 1 each",
			e.refusals(reasonUnknownDevice), e.refusals(reasonBadToken))
	}
}

// statusOf dials device i with token and returns the HTTP status (101 when
// the connection is accepted, then closed) and the Retry-After.
func statusOf(t *testing.T, e *env, i int, token string, header http.Header) (int, string) {
	t.Helper()
	h := http.Header{}
	for k, v := range header {
		h[k] = v
	}
	h.Set(HeaderDevice, deviceID(i))
	h.Set("Authorization", "Bearer "+token)
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	ws, resp, err := d.Dial(e.url, h)
	if err == nil {
		ws.Close()
		return http.StatusSwitchingProtocols, ""
	}
	if resp == nil {
		t.Fatalf("dial: %v", err)
	}
	return resp.StatusCode, resp.Header.Get("Retry-After")
}

func TestAuthFailuresPerAddressBlockThenRelease(t *testing.T) {
	e := startWith(t, 4, func(c *Config) {
		c.AuthLimit = auth.LimitConfig{Failures: 3, Window: time.Minute, Block: time.Second, MaxBlock: time.Second, MaxKeys: 1024}
		c.AuthDeviceFailures = 0
	})
	for i := range 3 {
		if code, _ := statusOf(t, e, i, "wrong", nil); code != http.StatusUnauthorized {
			t.Fatalf("failure %d: HTTP %d, want 401", i+1, code)
		}
	}
	// Blocked: even a good token gets 429, without being checked.
	code, retry := statusOf(t, e, 3, tokenOf(3), nil)
	if code != http.StatusTooManyRequests {
		t.Fatalf("after 3 failures, a good token: HTTP %d, want 429", code)
	}
	if n, err := strconv.Atoi(retry); err != nil || n < 1 || n > 1 {
		t.Fatalf("Retry-After %q, want 1 (the block's seconds)", retry)
	}
	if got := e.refusals(reasonAuthRateLimit); got != 1 {
		t.Fatalf("refusals{auth_rate_limit} = %v, want 1", got)
	}
	if got := e.refusals(reasonBadToken); got != 3 {
		t.Fatalf("refusals{bad_token} = %v, want 3 (the blocked one is not checked)", got)
	}
	// Released when the block ends.
	waitFor(t, 10*time.Second, "the address released", func() bool {
		code, _ := statusOf(t, e, 3, tokenOf(3), nil)
		return code == http.StatusSwitchingProtocols
	})
	if got := e.f.srcLimit.Blocks(); got != 1 {
		t.Fatalf("blocks = %v, want 1", got)
	}
}

func TestAuthFailuresPerDeviceBlockOnlyThatID(t *testing.T) {
	e := startWith(t, 4, func(c *Config) {
		c.AuthLimit = auth.LimitConfig{Failures: 1000, Window: time.Minute, Block: time.Minute, MaxBlock: time.Minute, MaxKeys: 1024}
		c.AuthDeviceFailures = 2
	})
	for range 2 {
		statusOf(t, e, 1, "guess", nil)
		statusOf(t, e, 99, "guess", nil) // an id that does not exist
	}
	for _, i := range []int{1, 99} {
		if code, _ := statusOf(t, e, i, tokenOf(i), nil); code != http.StatusTooManyRequests {
			t.Errorf("device %d after 2 failures: HTTP %d, want 429 (existing or not)", i, code)
		}
	}
	if code, _ := statusOf(t, e, 2, tokenOf(2), nil); code != http.StatusSwitchingProtocols {
		t.Fatalf("another device from the same address: HTTP %d, want accepted", code)
	}
}

// X-Forwarded-For counts only when it comes from a trusted proxy; then
// each client behind the proxy has its own budget.
func TestAuthLimitHonoursForwardedForOnlyFromTrustedProxies(t *testing.T) {
	limit := auth.LimitConfig{Failures: 2, Window: time.Minute, Block: time.Minute, MaxBlock: time.Minute, MaxKeys: 1024}
	xff := func(a string) http.Header { return http.Header{"X-Forwarded-For": {a}} }

	trusted := startWith(t, 4, func(c *Config) {
		c.AuthLimit, c.AuthDeviceFailures, c.TrustedProxies = limit, 0, []string{"127.0.0.0/8"}
	})
	statusOf(t, trusted, 1, "bad", xff("198.51.100.1"))
	statusOf(t, trusted, 1, "bad", xff("198.51.100.1"))
	if code, _ := statusOf(t, trusted, 1, tokenOf(1), xff("198.51.100.1")); code != http.StatusTooManyRequests {
		t.Errorf("the failing client behind the proxy: HTTP %d, want 429", code)
	}
	if code, _ := statusOf(t, trusted, 1, tokenOf(1), xff("198.51.100.2")); code != http.StatusSwitchingProtocols {
		t.Errorf("another client behind the proxy: HTTP %d, want accepted", code)
	}

	untrusted := startWith(t, 4, func(c *Config) { c.AuthLimit, c.AuthDeviceFailures = limit, 0 })
	statusOf(t, untrusted, 1, "bad", xff("198.51.100.1"))
	statusOf(t, untrusted, 1, "bad", xff("198.51.100.2"))
	if code, _ := statusOf(t, untrusted, 1, tokenOf(1), xff("198.51.100.3")); code != http.StatusTooManyRequests {
		t.Errorf("a forged X-Forwarded-For without a trusted proxy escaped the limit: HTTP %d, want 429", code)
	}
}
