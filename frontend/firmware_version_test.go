package frontend

import (
	"net/http"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/drover-telemetry/drover/telemetry"
)

// TestFirmwareVersionAtConnect: a device names the firmware version it runs
// when it connects (header, or query parameter); the frontend reports it
// with the device's presence and the control plane's registry shows it. A
// version outside the rule is refused with 400 and counted; a device that
// names none connects as before.
func TestFirmwareVersionAtConnect(t *testing.T) {
	dir, addr := t.TempDir(), freeLoopback(t)
	cp := startControlPlane(t, dir, addr)
	cp.call("POST", "/v1/fleets", map[string]string{"id": "acme"}, nil)
	tok0, tok1 := cp.device(0), cp.device(1)
	e := start(t, followConfig(t, cp))
	var seen time.Time // the last version's report
	version := func(i int) string {
		var d struct {
			Presence *struct {
				LastSeenAt      time.Time `json:"last_seen_at"`
				Connected       bool      `json:"connected"`
				FirmwareVersion string    `json:"firmware_version"`
			} `json:"presence"`
		}
		cp.call("GET", "/v1/devices/"+deviceID(i), nil, &d)
		if d.Presence == nil || !d.Presence.Connected {
			return "(not connected)"
		}
		seen = d.Presence.LastSeenAt
		return d.Presence.FirmwareVersion
	}
	dial := func(i int, token, header, query string) (*websocket.Conn, *http.Response, error) {
		h := http.Header{}
		h.Set(HeaderDevice, deviceID(i))
		h.Set("Authorization", "Bearer "+token)
		if header != "" {
			h.Set(telemetry.HeaderFirmware, header)
		}
		u := e.url
		if query != "" {
			u += "?" + telemetry.QueryFirmware + "=" + query
		}
		d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
		return d.Dial(u, h)
	}

	before := e.refusals(reasonBadFirmware)
	if _, resp, err := dial(0, tok0, "4.2.0 beta", ""); err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("a bad version: %v %v, want 400", resp, err)
	}
	if got := e.refusals(reasonBadFirmware); got != before+1 {
		t.Errorf("refusals{bad_firmware} = %v, want %v", got, before+1)
	}

	ws, _, err := dial(0, tok0, "4.2.0-rc1+b7", "")
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	ws1, _, err := dial(1, tok1, "", "3.9.1")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the versions in the registry", func() bool {
		return version(0) == "4.2.0-rc1+b7" && version(1) == "3.9.1"
	})
	// Reconnecting without naming a version keeps the one known.
	version(1)
	first := seen
	time.Sleep(5 * time.Millisecond) // presence times are in milliseconds: the next connect's must differ
	ws1.Close()
	ws1, _, err = dial(1, tok1, "", "")
	if err != nil {
		t.Fatal(err)
	}
	defer ws1.Close()
	waitFor(t, 5*time.Second, "device 1's new connect reported", func() bool {
		return version(1) != "(not connected)" && seen.After(first)
	})
	if got := version(1); got != "3.9.1" {
		t.Errorf("after a connect naming none: %q, want 3.9.1 kept", got)
	}
}
