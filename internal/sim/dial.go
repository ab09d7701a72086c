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

// askElsewhereAfter is the longest place in line a device waits for without asking another
// frontend first. Short enough that a herd finds a restarted frontend within the 15 s a
// stampede should settle in (a restart takes ~5 s, then at most this, then the connection);
// long enough that the usual place, a few seconds, is simply taken.
const askElsewhereAfter = 5 * time.Second

// place is a place in line a frontend holds for the device: at (Fleet.since) at urls[url].
type place struct {
	url int
	at  time.Duration
}

// placeInLine decides where a device told to wait goes next: frontend u answered with a
// Retry-After (wait, jitter added). It returns the frontend to go back to (-1: pick another),
// the wait, and the place held while the device asks elsewhere (docs/ingest.md, the device's
// side, 2. and 4.):
//   - A wait up to askElsewhereAfter, or a single frontend: go back to u
//     after the wait, once (wentBack: it was already a return, so pick another).
//   - A longer wait of a 503 (busy) while other frontends are known: that frontend's line is long (it is busy,
//     or its governor cut its rate to protect its own devices' acks) while another may have
//     room at once, as a restarted one does after a kill. Keep the place (the frontend holds it
//     whether the device comes or not) and ask one other frontend within a second.
//   - Told to wait by that other one too: go back to whichever place comes first.
func (d *device) placeInLine(u int, wentBack, busy bool, wait time.Duration, held place) (int, time.Duration, place) {
	now := d.f.since()
	if held.url >= 0 && held.url != u {
		if held.at <= now+wait {
			return held.url, max(held.at-now, 0), place{url: -1}
		}
		return u, wait, place{url: -1}
	}
	if busy && wait > askElsewhereAfter && len(d.f.urls) > 1 && !wentBack {
		return -1, time.Duration(d.rng.Int64N(int64(time.Second))), place{url: u, at: now + wait}
	}
	if wentBack {
		return -1, wait, place{url: -1}
	}
	return u, wait, place{url: -1}
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
