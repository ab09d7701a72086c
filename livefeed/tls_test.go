package livefeed

import (
	"crypto/tls"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/drover-telemetry/drover/internal/tlsserve/tlstest"
)

// TestTLSServesClientsAndMap runs the livefeed with a certificate: a client
// over wss:// gets its hello and a snapshot, the map page comes over
// https://, a replaced certificate is served to new clients while the
// client connected before keeps its connection, and plain ws:// fails.
func TestTLSServesClientsAndMap(t *testing.T) {
	ca := tlstest.NewCA(t, "livefeed test CA")
	dir := t.TempDir()
	cert, key := ca.Server(t, "live-1").Write(t, dir, "server")
	pub := newPublisher(t, "r1")
	rf := startFeed(t, func(c *Config) {
		c.TLS.CertFile, c.TLS.KeyFile, c.TLS.Poll = cert, key, 20*time.Millisecond
	}, pub)
	clientTLS := &tls.Config{RootCAs: ca.Pool()}
	d := &websocket.Dialer{HandshakeTimeout: 5 * time.Second, TLSClientConfig: clientTLS}
	h := http.Header{}
	h.Set("Authorization", "Bearer "+devToken)
	ws, _, err := d.Dial(rf.url("wss")+LivePath, h)
	if err != nil {
		t.Fatalf("wss client: %v", err)
	}
	c := startClient(t, ws)
	c.subscribe(subscribeMsg{})
	if cn := ws.NetConn().(*tls.Conn).ConnectionState().PeerCertificates[0].Subject.CommonName; cn != "live-1" {
		t.Fatalf("served %q", cn)
	}

	web := &http.Client{Transport: &http.Transport{TLSClientConfig: clientTLS}, Timeout: 5 * time.Second}
	resp, err := web.Get(rf.url("https") + "/?token=" + url.QueryEscape(devToken))
	if err != nil {
		t.Fatalf("map page over https: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "<html") {
		t.Fatalf("map page: HTTP %d", resp.StatusCode)
	}

	ca.Server(t, "live-2").Write(t, dir, "server")
	waitFor(t, 5*time.Second, "a client served the new certificate", func() bool {
		ws2, _, err := d.Dial(rf.url("wss")+LivePath, h)
		if err != nil {
			t.Fatalf("after the reload: %v", err)
		}
		defer ws2.Close()
		return ws2.NetConn().(*tls.Conn).ConnectionState().PeerCertificates[0].Subject.CommonName == "live-2"
	})
	c.subscribe(subscribeMsg{}) // the client from before is still served

	if _, _, err := (&websocket.Dialer{HandshakeTimeout: 2 * time.Second}).Dial(rf.url("ws")+LivePath, h); err == nil {
		t.Fatal("a plain ws:// client was served by a TLS livefeed")
	}
}
