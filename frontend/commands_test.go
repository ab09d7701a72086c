package frontend

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/drover-telemetry/drover/internal/apiclient"
	"github.com/drover-telemetry/drover/telemetry"
)

// Commands through a real control plane (drover api on SQLite, in this
// process) and real frontends, to devices played by the test over real
// WebSockets, frame by frame, as docs/wire-format.md says a device does.

// apiCommand is the part of the API's command the tests look at.
type apiCommand struct {
	ID       string `json:"id"`
	State    string `json:"state"`
	Attempts int    `json:"attempts"`
	Payload  string `json:"payload"`
	Message  string `json:"message"`
	Progress *struct {
		Stage string `json:"stage"`
		Bytes int64  `json:"bytes"`
	} `json:"progress"`
}

// post sends a command; safe from any goroutine (errors are returned).
func (cp *controlPlane) post(dev, query string, body any) (apiCommand, error) {
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest("POST", cp.url+"/v1/devices/"+dev+"/commands"+query, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+cp.adminKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return apiCommand{}, err
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated {
		return apiCommand{}, fmt.Errorf("POST command: %d %s", resp.StatusCode, rb)
	}
	var c apiCommand
	return c, json.Unmarshal(rb, &c)
}

func (cp *controlPlane) command(dev, id string) apiCommand {
	cp.t.Helper()
	var c apiCommand
	cp.call("GET", "/v1/devices/"+dev+"/commands/"+id, nil, &c)
	return c
}

// downlink reads the next frame the device gets, skipping acks of readings.
func downlink(t testing.TB, ws *websocket.Conn, text bool) *telemetry.Downlink {
	t.Helper()
	for {
		_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		typ, b, err := ws.ReadMessage()
		if err != nil {
			t.Fatalf("read downlink: %v", err)
		}
		if (typ == websocket.TextMessage) != text {
			t.Fatalf("downlink of message type %d to a text=%v device", typ, text)
		}
		d, err := telemetry.DecodeDownlink(b, text)
		if err != nil {
			t.Fatal(err)
		}
		if d.GetAck() == nil {
			return d
		}
	}
}

func waitConnected(t testing.TB, cp *controlPlane, i int, fe string) {
	t.Helper()
	waitFor(t, 5*time.Second, deviceID(i)+" reported connected to "+fe, func() bool {
		got, connected, ok := cp.presence(i)
		return ok && connected && got == fe
	})
}

// TestCommandRoundTripThroughFrontend: an operator's POST with ?wait
// returns the device's result; the device gets the command in the
// encoding it speaks, with its time to live; its report_ack comes only
// once the API has stored the result.
func TestCommandRoundTripThroughFrontend(t *testing.T) {
	cp := startControlPlane(t, t.TempDir(), freeLoopback(t))
	cp.call("POST", "/v1/fleets", map[string]string{"id": "acme"}, nil)
	tokens := []string{cp.device(0), cp.device(1)}
	e := start(t, followConfig(t, cp))
	for i, text := range []bool{false, true} {
		ws := e.connectWith(t, i, tokens[i])
		ack(t, ws, text, readings(time.Now(), 1), 1) // the device's encoding is known from here
		waitConnected(t, cp, i, e.cfg.ID)
		began := time.Now()
		res := make(chan apiCommand, 1)
		errc := make(chan error, 1)
		go func() {
			c, err := cp.post(deviceID(i), "?wait=10s", map[string]any{"name": "unlock", "params": map[string]string{"door": "driver"}, "ttl": "30s"})
			res <- c
			errc <- err
		}()
		cmd := downlink(t, ws, text).GetCommand()
		if cmd == nil || cmd.Name != "unlock" || cmd.Params["door"] != "driver" || cmd.Seq != 1 ||
			cmd.TtlMs <= 0 || cmd.TtlMs > 30_000 || cmd.ExpiresMs <= time.Now().UnixMilli() {
			t.Fatalf("text=%v: command frame %v", text, cmd)
		}
		send(t, ws, text, &telemetry.Uplink{Reports: []*telemetry.CommandReport{
			{Id: cmd.Id, Status: telemetry.CommandStatus_COMMAND_STATUS_RECEIVED},
			{Id: cmd.Id, Status: telemetry.CommandStatus_COMMAND_STATUS_SUCCEEDED, Payload: `{"unlocked":true}`},
		}})
		// Both reports acked, in one report_ack or in two: the frontend acks
		// what each post to the control plane stored.
		for acked := 0; acked < 2; {
			ra := downlink(t, ws, text).GetReportAck()
			if ra == nil || len(ra.Ids) == 0 || len(ra.Ids) > 2-acked {
				t.Fatalf("text=%v: report ack %v after %d acked", text, ra, acked)
			}
			for _, id := range ra.Ids {
				if id != cmd.Id {
					t.Fatalf("text=%v: report ack of %q, want %q", text, id, cmd.Id)
				}
			}
			acked += len(ra.Ids)
		}
		// The ack means stored: the API already says so.
		if got := cp.command(deviceID(i), cmd.Id); got.State != "succeeded" {
			t.Errorf("text=%v: report acked while the API says %s", text, got.State)
		}
		c, err := <-res, <-errc
		if err != nil || c.State != "succeeded" || c.Payload != `{"unlocked":true}` {
			t.Fatalf("text=%v: waited POST: %+v %v", text, c, err)
		}
		t.Logf("text=%v: POST?wait → result: %v", text, time.Since(began))
	}
	if n := testutil.ToFloat64(e.f.commands.events.WithLabelValues("written")); n != 2 {
		t.Errorf("written = %v, want 2", n)
	}
}

// TestCommandFollowsDeviceAcrossFrontends: a command written to a device
// that left before answering is delivered again on the frontend it
// reconnected to, and the device, deduplicating by id, executes it once;
// a command queued while the device is offline is delivered when it comes
// back, to whichever frontend.
func TestCommandFollowsDeviceAcrossFrontends(t *testing.T) {
	cp := startControlPlane(t, t.TempDir(), freeLoopback(t))
	cp.call("POST", "/v1/fleets", map[string]string{"id": "acme"}, nil)
	tok := cp.device(0)
	cfgA, cfgB := followConfig(t, cp), followConfig(t, cp)
	cfgA.ID, cfgB.ID = "fe-a", "fe-b"
	a, b := start(t, cfgA), start(t, cfgB)

	wsA := a.connectWith(t, 0, tok)
	waitConnected(t, cp, 0, "fe-a")
	posted, err := cp.post(deviceID(0), "", map[string]any{"name": "locate", "ttl": "1m"})
	if err != nil {
		t.Fatal(err)
	}
	first := downlink(t, wsA, false).GetCommand()
	if first == nil || first.Id != posted.ID {
		t.Fatalf("on fe-a: %v", first)
	}
	// The device executes it, and loses its link before reporting.
	executed := map[string]int{first.Id: 1}
	wsA.Close()
	wsB := b.connectWith(t, 0, tok)
	again := downlink(t, wsB, false).GetCommand()
	if again == nil || again.Id != posted.ID {
		t.Fatalf("on fe-b: %v", again)
	}
	if executed[again.Id] > 0 { // a duplicate: report again, do not execute
		send(t, wsB, false, &telemetry.Uplink{Reports: []*telemetry.CommandReport{
			{Id: again.Id, Status: telemetry.CommandStatus_COMMAND_STATUS_SUCCEEDED, Payload: "here"}}})
	}
	if ra := downlink(t, wsB, false).GetReportAck(); ra == nil || ra.Ids[0] != posted.ID {
		t.Fatalf("report ack %v", ra)
	}
	if c := cp.command(deviceID(0), posted.ID); c.State != "succeeded" || c.Attempts != 2 || c.Payload != "here" {
		t.Errorf("after the move: %+v", c)
	}

	// Offline: queued, then delivered at the reconnect, on fe-a this time.
	wsB.Close()
	waitFor(t, 5*time.Second, "disconnect reported", func() bool {
		_, connected, _ := cp.presence(0)
		return !connected
	})
	queued, err := cp.post(deviceID(0), "", map[string]any{"name": "set_interval", "params": map[string]string{"seconds": "30"}})
	if err != nil {
		t.Fatal(err)
	}
	if c := cp.command(deviceID(0), queued.ID); c.State != "queued" || c.Attempts != 0 {
		t.Errorf("offline: %+v", c)
	}
	wsA = a.connectWith(t, 0, tok)
	if cmd := downlink(t, wsA, false).GetCommand(); cmd == nil || cmd.Id != queued.ID || cmd.Seq != 2 {
		t.Fatalf("after reconnect: %v", cmd)
	}
}

// TestExpiredCommandNotWritten: the frontend checks a command's expiry
// right before writing it, whatever the API said: an expired command never
// reaches the device (the next one does, first), and is reported back.
func TestExpiredCommandNotWritten(t *testing.T) {
	cp := startControlPlane(t, t.TempDir(), freeLoopback(t))
	cp.call("POST", "/v1/fleets", map[string]string{"id": "acme"}, nil)
	tok := cp.device(0)
	e := start(t, followConfig(t, cp))
	ws := e.connectWith(t, 0, tok)
	now := time.Now()
	ack(t, ws, false, readings(now, 1), 1) // the connection is the device's in force
	e.f.commands.write(apiclient.DispatchedCommand{ID: "cmd_old", DeviceID: deviceID(0), Name: "immobilise",
		ExpiresAt: now.Add(-time.Millisecond).UnixMilli()})
	e.f.commands.write(apiclient.DispatchedCommand{ID: "cmd_new", DeviceID: deviceID(0), Name: "locate",
		ExpiresAt: now.Add(time.Minute).UnixMilli()})
	if cmd := downlink(t, ws, false).GetCommand(); cmd == nil || cmd.Id != "cmd_new" {
		t.Fatalf("first command the device got: %v", cmd)
	}
	if n := testutil.ToFloat64(e.f.commands.events.WithLabelValues("expired")); n != 1 {
		t.Errorf("expired = %v, want 1", n)
	}
}

// TestQueuedCommandInDeviceEncoding: a JSON device that connects with
// ?encoding=json gets a command queued while it was away as JSON, before
// it has sent a frame.
func TestQueuedCommandInDeviceEncoding(t *testing.T) {
	cp := startControlPlane(t, t.TempDir(), freeLoopback(t))
	cp.call("POST", "/v1/fleets", map[string]string{"id": "acme"}, nil)
	tok := cp.device(0)
	e := start(t, followConfig(t, cp))
	queued, err := cp.post(deviceID(0), "", map[string]any{"name": "locate"})
	if err != nil {
		t.Fatal(err)
	}
	u := e.url + "?" + url.Values{QueryDevice: {deviceID(0)}, QueryToken: {tok}, QueryEncoding: {"json"}}.Encode()
	ws, _, err := (&websocket.Dialer{HandshakeTimeout: 5 * time.Second}).Dial(u, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if cmd := downlink(t, ws, true).GetCommand(); cmd == nil || cmd.Id != queued.ID {
		t.Fatalf("first frame: %v", cmd)
	}
}

// TestProgressReportsToAnOlderAPI: a control plane older than wire format
// 1.2 refuses a batch of reports holding a progress outcome (422, as any
// unknown outcome); the frontend drops the progress reports, counted, and
// the device's final report behind them is stored all the same. The older
// control plane is the real one behind a proxy that refuses what an older
// one refuses (a fault the current one cannot produce).
func TestProgressReportsToAnOlderAPI(t *testing.T) {
	cp := startControlPlane(t, t.TempDir(), freeLoopback(t))
	cp.call("POST", "/v1/fleets", map[string]string{"id": "acme"}, nil)
	tok := cp.device(0)
	target, _ := url.Parse(cp.url)
	proxy := httputil.NewSingleHostReverseProxy(target)
	older := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/command-reports") {
			b, _ := io.ReadAll(r.Body)
			for _, o := range []string{"downloading", "verifying", "installing"} {
				if bytes.Contains(b, []byte(`"outcome":"`+o+`"`)) {
					w.Header().Set("Content-Type", "application/json")
					w.WriteHeader(http.StatusUnprocessableEntity)
					_, _ = io.WriteString(w, `{"code":"invalid","message":"report 0: outcome \"`+o+`\", want received, succeeded, failed or undeliverable"}`)
					return
				}
			}
			r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(b)), int64(len(b))
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(older.Close) // after the frontend's stop (cleanups run last first): its long polls end first
	cfg := followConfig(t, cp)
	cfg.Follow.API.URL = older.URL
	e := start(t, cfg)
	ws := e.connectWith(t, 0, tok)
	ack(t, ws, false, readings(time.Now(), 1), 1)
	waitConnected(t, cp, 0, e.cfg.ID)
	c, err := cp.post(deviceID(0), "", map[string]any{"name": "firmware_update", "ttl": "30s"})
	if err != nil {
		t.Fatal(err)
	}
	cmd := downlink(t, ws, false).GetCommand()
	if cmd == nil || cmd.Id != c.ID {
		t.Fatalf("command frame %v, want %s", cmd, c.ID)
	}
	send(t, ws, false, &telemetry.Uplink{Reports: []*telemetry.CommandReport{
		{Id: cmd.Id, Status: telemetry.CommandStatus_COMMAND_STATUS_DOWNLOADING, Bytes: 4096}}})
	send(t, ws, false, &telemetry.Uplink{Reports: []*telemetry.CommandReport{
		{Id: cmd.Id, Status: telemetry.CommandStatus_COMMAND_STATUS_SUCCEEDED, Payload: `{"version":"2"}`}}})
	waitFor(t, 10*time.Second, "the final report stored behind the refused progress", func() bool {
		return cp.command(deviceID(0), c.ID).State == "succeeded"
	})
	if n := testutil.ToFloat64(e.f.commands.events.WithLabelValues("progress_refused")); n != 1 {
		t.Errorf("progress_refused = %v, want 1", n)
	}
}
