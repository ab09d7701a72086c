package sim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"syscall"
	"time"

	"github.com/gorilla/websocket"

	"github.com/drover-telemetry/drover/telemetry"
)

// pickURL picks a frontend at random, another than last when there is a choice.
func (d *device) pickURL(last int) int {
	n := len(d.f.urls)
	if n == 1 {
		return 0
	}
	if last < 0 {
		return d.rng.IntN(n)
	}
	return (last + 1 + d.rng.IntN(n-1)) % n
}

// handshakeError is an upgrade refused with an HTTP status.
type handshakeError struct {
	status int
	body   string
}

func (e *handshakeError) Error() string {
	if e.body != "" {
		return fmt.Sprintf("upgrade refused: HTTP %d: %s", e.status, e.body)
	}
	return fmt.Sprintf("upgrade refused: HTTP %d", e.status)
}

// dial connects to url. On failure it counts and logs the failure and returns, for an HTTP 503
// or 429, the server's Retry-After (0 if none).
func (d *device) dial(ctx context.Context, url string) (*websocket.Conn, time.Duration, error) {
	f := d.f
	h := http.Header{}
	h.Set("X-Drover-Device", d.id)
	h.Set("Authorization", "Bearer "+d.token)
	if v := d.fwVersion.Load(); v != nil {
		h.Set(telemetry.HeaderFirmware, *v) // the version it runs now: after an update, the new one
	}
	conn, resp, err := d.dialer.DialContext(context.WithValue(ctx, deviceKey{}, d), url, h)
	if err == nil {
		b := httpBase(url) // firmware downloads go to this frontend
		d.base.Store(&b)
		return conn, 0, nil
	}
	if ctx.Err() != nil {
		return nil, 0, ctx.Err()
	}
	var (
		kind       string
		retryAfter time.Duration
	)
	var ne net.Error
	switch {
	case resp != nil:
		kind = "http_" + strconv.Itoa(resp.StatusCode)
		body := make([]byte, 128)
		n, _ := resp.Body.Read(body)
		err = &handshakeError{status: resp.StatusCode, body: string(bytes.TrimSpace(body[:n]))}
		if resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusTooManyRequests {
			retryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
		}
	case errors.Is(err, syscall.ECONNREFUSED):
		kind = "refused"
	case isTLSError(err):
		kind = "tls"
	case errors.As(err, &ne) && ne.Timeout():
		kind = "timeout"
	default:
		kind = "dial"
	}
	err = fmt.Errorf("connect %s: %w", url, err)
	f.c.errors.Add(1)
	f.c.count(&f.c.connectFailures, kind)
	f.note("connect:"+kind, "sim device cannot connect", "device", d.id, "err", err)
	return nil, retryAfter, err
}

// parseRetryAfter reads a Retry-After header: seconds or an HTTP date. 0 when absent or bad.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// Close codes after which a device reconnects at once to another frontend.
var (
	reasonServiceRestart = strconv.Itoa(websocket.CloseServiceRestart)
	reasonGoingAway      = strconv.Itoa(websocket.CloseGoingAway)
)

// disconnectReason names why the reader ended.
func disconnectReason(err error) string {
	var ce *websocket.CloseError
	var de *downlinkError
	switch {
	case errors.As(err, &ce):
		return strconv.Itoa(ce.Code)
	case errors.As(err, &de):
		return "error_" + strconv.FormatUint(uint64(de.code), 10)
	case errors.Is(err, errProtocol):
		return endProtocol
	default:
		return endError
	}
}
