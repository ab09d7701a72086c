package clusterlink

import (
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"
)

// TestLinkTLS: a ROUTER and a DEALER that share the cluster key talk over
// the link; both count one handshake, and the wire carries no plain ZMTP.
func TestLinkTLS(t *testing.T) {
	noLeaks(t)
	k := newKey(t)
	router := newSide(t, Config{KeyFile: keyFile(t, k)}, RoleRouter, "router-1")
	frontend := newSide(t, Config{Keys: []Key{k}}, RoleFrontend, "frontend-1")
	srv := startServer(t, router, LinkIngest)
	c := dialClient(t, frontend, LinkIngest, srv.addr)
	if err := c.exchange(t, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := metric(t, router.reg, "drover_link_handshakes_total", "link", "ingest", "side", "server"); got != 1 {
		t.Errorf("server handshakes %v, want 1", got)
	}
	if got := metric(t, frontend.reg, "drover_link_handshakes_total", "link", "ingest", "side", "client"); got != 1 {
		t.Errorf("client handshakes %v, want 1", got)
	}
	if got := metric(t, router.reg, "drover_link_refused_total"); got != 0 {
		t.Errorf("refused %v, want 0", got)
	}
	if got := metric(t, router.reg, "drover_link_insecure"); got != 0 {
		t.Errorf("insecure gauge %v, want 0", got)
	}

	// What a network observer sees is TLS 1.3: a raw TCP client gets a
	// ServerHello only when it speaks TLS, and the certificate names the
	// role.
	conn, err := tls.Dial("tcp", strings.TrimPrefix(srv.addr, "tcp://"), &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	if err == nil {
		// The handshake completes on the client's side before the server
		// has checked the (missing) client certificate.
		st := conn.ConnectionState()
		if st.Version != tls.VersionTLS13 {
			t.Errorf("TLS version %x, want 1.3", st.Version)
		}
		if n := st.PeerCertificates[0].DNSNames; len(n) != 1 || n[0] != "router.drover.internal" {
			t.Errorf("router certificate names %v", n)
		}
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
	}
	if err == nil {
		t.Fatal("a TLS client without a certificate could read from the link")
	}
	waitFor(t, 5*time.Second, "no_certificate counted", func() bool {
		return metric(t, router.reg, "drover_link_refused_total", "link", "ingest", "reason", "no_certificate") == 1
	})
}

// TestLinkRefusesOutsiders: a peer with another key, one without TLS, one
// with the wrong role, and one that stalls its handshake are each refused
// and counted with their reason; a stalled handshake holds up no other
// peer.
func TestLinkRefusesOutsiders(t *testing.T) {
	noLeaks(t)
	k := newKey(t)
	router := newSide(t, Config{Keys: []Key{k}}, RoleRouter, "router-1")
	// Long enough that an accept loop opening connections one at a time
	// behind the stalled ones would keep the good peer out for 5 × 5 s.
	router.handshakeTimeout = 5 * time.Second
	srv := startServer(t, router, LinkIngest)
	hostport := strings.TrimPrefix(srv.addr, "tcp://")

	// Stalled: TCP connected, nothing sent. Several, to occupy any accept
	// loop that would wait for them.
	var stalled []net.Conn
	for range 5 {
		c, err := net.Dial("tcp", hostport)
		if err != nil {
			t.Fatal(err)
		}
		stalled = append(stalled, c)
	}
	defer func() {
		for _, c := range stalled {
			c.Close()
		}
	}()
	// A legitimate peer gets through at once, stalled peers or not.
	good := newSide(t, Config{Keys: []Key{k}}, RoleFrontend, "frontend-1")
	if err := dialClient(t, good, LinkIngest, srv.addr).exchange(t, 4*time.Second); err != nil {
		t.Fatalf("a good peer behind stalled handshakes: %v", err)
	}

	wrongKey := newSide(t, Config{Keys: []Key{newKey(t)}}, RoleFrontend, "intruder")
	wk := dialClient(t, wrongKey, LinkIngest, srv.addr)
	insecure := newSide(t, Config{Insecure: true}, RoleFrontend, "plain")
	in := dialClient(t, insecure, LinkIngest, srv.addr)
	wrongRole := newSide(t, Config{Keys: []Key{k}}, RoleLivefeed, "livefeed-1")
	// A livefeed has no side on the ingest link: it cannot even ask.
	if _, err := wrongRole.Endpoint(LinkIngest, srv.addr); err == nil {
		t.Errorf("a livefeed got an ingest endpoint")
	}
	// A storage writer (client of the store link) dialling the ingest
	// port: the router's certificate is fine, its own role is not.
	writer := newSide(t, Config{Keys: []Key{k}}, RoleStorageWriter, "lake")
	wr := dialClient(t, writer, LinkStore, srv.addr)

	for _, c := range []*client{wk, in, wr} {
		if err := c.exchange(t, 300*time.Millisecond); err == nil {
			t.Errorf("an outsider exchanged a message")
		}
	}
	for _, reason := range []string{"peer_refused", "not_tls", "wrong_role", "timeout"} {
		waitFor(t, 10*time.Second, reason+" refusals counted", func() bool {
			return metric(t, router.reg, "drover_link_refused_total", "link", "ingest", "side", "server", "reason", reason) > 0
		})
	}
	if got := metric(t, wrongKey.reg, "drover_link_refused_total", "link", "ingest", "side", "client", "reason", "unknown_authority"); got == 0 {
		t.Errorf("the wrong-key client counted no unknown_authority refusal")
	}
	if got := metric(t, router.reg, "drover_link_handshakes_total", "link", "ingest", "side", "server"); got != 1 {
		t.Errorf("server handshakes %v, want only the good peer's", got)
	}
}

// TestKeyRotation: a process with keys [new, old] talks to one that knows
// only old and to one that knows only new, both ways; those two cannot
// talk to each other. Then the file of the [old] process is rewritten to
// [new, old] and, without a restart, it is trusted by the [new] process.
func TestKeyRotation(t *testing.T) {
	noLeaks(t)
	oldKey, newKey := newKey(t), newKey(t)
	both := Config{Keys: []Key{newKey, oldKey}}
	oldFile := keyFile(t, oldKey)
	oldOnly := Config{KeyFile: oldFile}
	newOnly := Config{Keys: []Key{newKey}}

	for _, tc := range []struct {
		name           string
		server, client Config
		ok             bool
	}{
		{"both→old", oldOnly, both, true},
		{"old→both", both, oldOnly, true},
		{"both→new", newOnly, both, true},
		{"new→both", both, newOnly, true},
		{"old→new", newOnly, oldOnly, false},
		{"new→old", oldOnly, newOnly, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			router := newSide(t, tc.server, RoleRouter, "router-1")
			srv := startServer(t, router, LinkStore)
			writer := newSide(t, tc.client, RoleStorageWriter, "lake")
			err := dialClient(t, writer, LinkStore, srv.addr).exchange(t, 2*time.Second)
			if tc.ok && err != nil {
				t.Fatalf("rotation peers cannot talk: %v", err)
			}
			if !tc.ok && err == nil {
				t.Fatalf("peers without a common key talked")
			}
		})
	}

	// Step 1 of the procedure on the [old] process: add the new key as
	// accepted. Its Security re-reads the file when it changes.
	router := newSide(t, oldOnly, RoleRouter, "router-1")
	router.now = func() time.Time { return time.Now().Add(time.Hour) } // past the reload interval
	srv := startServer(t, router, LinkStore)
	if err := WriteKeyFile(oldFile, oldKey, newKey); err != nil {
		t.Fatal(err)
	}
	writer := newSide(t, newOnly, RoleStorageWriter, "lake")
	if err := dialClient(t, writer, LinkStore, srv.addr).exchange(t, 5*time.Second); err != nil {
		t.Fatalf("after the key file gained the new key: %v", err)
	}
}
