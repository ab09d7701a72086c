package frontend

import (
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestDeviceIDOutsideAlphabet: an id that breaks telemetry.ValidateDeviceID
// is refused before the upgrade with HTTP 400 and the rule, counted as
// bad_device_id, whether it comes in the header or the query, and never
// reaches the registry (no unknown_device or bad_token is counted).
func TestDeviceIDOutsideAlphabet(t *testing.T) {
	e := startWith(t, 2, nil)
	for _, tc := range []struct {
		name, id, want string
		byQuery        bool
	}{
		{"trailing backslash", `tail\`, `invalid device id: byte 4 ('\\') is not one of A-Z a-z 0-9 . _ - :`, false},
		{"space in query", "a b", `invalid device id: byte 1 (' ')`, true},
		{"leading dash", "-dev-1", "invalid device id: must start with a letter or a digit", false},
		{"too long", strings.Repeat("d", 129), "invalid device id: 129 bytes, at most 128", false},
		{"non-ASCII", "trück", "invalid device id: byte 2", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.refusals(reasonBadDeviceID)
			u, h := e.url, http.Header{}
			if tc.byQuery {
				u += "?" + url.Values{QueryDevice: {tc.id}, QueryToken: {tokenOf(1)}}.Encode()
			} else {
				h.Set(HeaderDevice, tc.id)
				h.Set("Authorization", "Bearer "+tokenOf(1))
			}
			d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
			ws, resp, err := d.Dial(u, h)
			if err == nil {
				ws.Close()
				t.Fatal("connection accepted")
			}
			if resp == nil || resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("dial: %v, response %v; want HTTP 400", err, resp)
			}
			b, _ := io.ReadAll(resp.Body)
			if !strings.Contains(string(b), tc.want) {
				t.Errorf("body %q, want %q", b, tc.want)
			}
			if got := e.refusals(reasonBadDeviceID); got != before+1 {
				t.Errorf("refusals{bad_device_id} = %v, want %v", got, before+1)
			}
		})
	}
	if got := e.refusals(reasonUnknownDevice) + e.refusals(reasonBadToken); got != 0 {
		t.Errorf("%v refusals counted as unknown device or bad token: the registry was consulted", got)
	}
	// A valid id still connects.
	e.connect(t, 1, false)
}
