package frontend

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestFrontDoor: device upgrades are served by the listener's front door
// without net/http; everything else reaches net/http as before, with its TLS
// state: a device authenticated by its certificate whose request head is
// too large for the front door's buffer is still that device, a plain GET of
// the ingest path is told what it should have sent, another path is not found.
func TestFrontDoor(t *testing.T) {
	tf := newTLSFiles(t, "edge")
	devCA := tf.ca // any CA will do: the frontend is given this one for devices
	caFile := devCA.WriteCA(t, tf.dir, "devices.pem")
	e := startWith(t, 3, func(c *Config) {
		tf.withTLS(false)(c)
		c.TLS.ClientCAFile, c.DeviceAuth = caFile, DeviceAuthCertOrToken
	})
	handed := func() float64 { return e.metric(e.f.m.handedToHTTP) }

	// A usual upgrade, by token: the front door's.
	ws, _, err := e.dialWith(tf.tlsDialer(nil, nil), 1, tokenOf(1))
	if err != nil {
		t.Fatalf("upgrade by token: %v", err)
	}
	ack(t, ws, false, readings(time.Now(), 1), 1)
	ws.Close()
	if n := handed(); n != 0 {
		t.Fatalf("a usual upgrade was handed to net/http (%v)", n)
	}
	// Refused on the front door: the whole answer arrives, status, reason and body.
	_, resp, err := e.dialWith(tf.tlsDialer(nil, nil), 1, "wrong")
	if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("bad token: %v (response %v), want 401", err, resp)
	}
	if body, _ := io.ReadAll(resp.Body); strings.TrimSpace(string(body)) != textUnauthorized {
		t.Errorf("bad token: body %q, want %q", body, textUnauthorized)
	}

	// A head over the front door's buffer: net/http serves it, and the
	// device's certificate still names it.
	cert := devCA.Client(t, deviceID(0)).TLS(t)
	d := tf.tlsDialer(nil, &cert)
	h := http.Header{}
	h.Set("X-Padding", strings.Repeat("p", headBufSize))
	ws, _, err = d.Dial(e.wssURL(), h)
	if err != nil {
		t.Fatalf("certificate, head over %d bytes: %v", headBufSize, err)
	}
	ack(t, ws, false, readings(time.Now(), 1), 1)
	ws.Close()
	// Counted once the connection is in net/http's hands, which may answer
	// before the front door's goroutine counts it: polled.
	waitFor(t, 5*time.Second, "the large head counted as handed to net/http", func() bool { return handed() == 1 })

	// Not upgrades: net/http's answers, and the front door counts them.
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: tf.ca.Pool()}}}
	defer client.CloseIdleConnections()
	for _, c := range []struct {
		path   string
		status int
	}{{IngestPath, http.StatusBadRequest}, {"/elsewhere", http.StatusNotFound}} {
		resp, err := client.Get("https://" + e.f.Addr().String() + c.path)
		if err != nil {
			t.Fatalf("GET %s: %v", c.path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.status {
			t.Errorf("GET %s: %d, want %d", c.path, resp.StatusCode, c.status)
		}
	}
	waitFor(t, 5*time.Second, "three connections counted as handed to net/http", func() bool { return handed() == 3 })
}

// TestFrontDoorStopsWithoutWaitingForHeads: a connection that never finishes
// its request head does not hold a stopping frontend for the head's timeout.
func TestFrontDoorStopsWithoutWaitingForHeads(t *testing.T) {
	e := startWith(t, 1, func(c *Config) { c.WriteTimeout = 2 * time.Minute })
	c, err := net.Dial("tcp", e.f.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("GET " + IngestPath + " HTTP/1.1\r\nHost: x\r\n")); err != nil {
		t.Fatal(err)
	}
	// The head is being read once the front door has the connection.
	waitFor(t, 5*time.Second, "the front door reading the head", func() bool {
		l := e.f.front.Load()
		if l == nil {
			return false
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		return len(l.reading) == 1
	})
	took, err := e.stop(t)
	if err != nil {
		t.Fatal(err)
	}
	if took > time.Minute {
		t.Errorf("stop took %v: it waited for the half-sent head", took)
	}
	// The connection was closed by the stop, without an answer.
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if line, err := bufio.NewReader(c).ReadString('\n'); err == nil {
		t.Errorf("the half-sent head was answered %q", line)
	}
}

// BenchmarkConnect connects and closes devices one after another: the bytes
// and allocations per connection (client and server sides: the client's
// stay the same when the server changes, so compare B/op across versions).
//
//	go test -run '^$' -bench BenchmarkConnect -benchmem -benchtime 2000x ./frontend/
func BenchmarkConnect(b *testing.B) {
	const devices = 100
	e := startWith(b, devices, func(c *Config) {
		c.Admission.Rate = 0
		c.Admission.FlapConnects = 0
	})
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		ws, _, err := e.dial(i%devices, tokenOf(i%devices), false)
		if err != nil {
			b.Fatal(err)
		}
		ws.Close()
	}
}
