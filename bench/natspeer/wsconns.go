package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

// wsconnsMain is `natspeer wsconns`: the peer side of drover's connection benchmarks
// (scripts/bench-conns.sh). It opens -conns NATS client connections to a nats-server's WebSocket
// listener, each a real NATS client at the protocol level (read INFO, send CONNECT and PING,
// wait for PONG, answer the server's PINGs), holds them, and, for -waves above 1, drops them all
// and connects again (over wss://, each connection resuming its own TLS session, as a drover
// device does). It reports per wave how long the connections took and how many failed, so that
// nats-server's connect rate and memory per idle connection are measured the way drover's
// frontend is (with drover sim). The client holds each connection with one goroutine.
//
//	natspeer wsconns -url ws://127.0.0.1:8443 -conns 15000 -hold 30s -summary nats-ws.json
//	natspeer wsconns -url wss://127.0.0.1:8443 -ca ca.pem -conns 15000 -waves 2 -summary nats-wss.json
func wsconnsMain(args []string) int {
	fs := flag.NewFlagSet("natspeer wsconns", flag.ContinueOnError)
	var c wsConfig
	fs.StringVar(&c.url, "url", "ws://127.0.0.1:8080", "the nats-server's WebSocket `url` (ws:// or wss://)")
	fs.StringVar(&c.ca, "ca", "", "PEM `file` of the CA of the server's certificate (wss://)")
	fs.StringVar(&c.serverName, "server-name", "", "`name` to check in the server's certificate (default: the URL's host)")
	fs.IntVar(&c.conns, "conns", 1000, "connections to open (`number`)")
	fs.IntVar(&c.parallel, "parallel", 512, "connection attempts at once (`number`)")
	fs.Float64Var(&c.rate, "connect-rate", 0, "connections started per second (`number`); 0: as fast as -parallel allows")
	fs.DurationVar(&c.hold, "hold", 10*time.Second, "how long to hold the connections once all are open (`duration`)")
	fs.IntVar(&c.waves, "waves", 1, "times to connect everyone: each wave after the first drops every connection and connects again, resuming TLS sessions (`number`)")
	fs.StringVar(&c.localAddrs, "local-addrs", "", "comma-separated source `addresses` to dial from, round-robin")
	fs.StringVar(&c.summary, "summary", "-", "write the JSON summary to this `file` (- for standard output)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runWS(ctx, c); err != nil {
		fmt.Fprintln(os.Stderr, "natspeer wsconns:", err)
		return 1
	}
	return 0
}

type wsConfig struct {
	url, ca, serverName string
	conns, parallel     int
	rate                float64
	hold                time.Duration
	waves               int
	localAddrs          string
	summary             string
}

// WSWave is one wave of connections.
type WSWave struct {
	Wave int `json:"wave"`
	// Seconds from the wave's first attempt to its last connection open (INFO, CONNECT, PONG).
	Seconds       float64 `json:"seconds"`
	Connected     int     `json:"connected"`
	Failed        int     `json:"failed"`
	FirstErr      string  `json:"first_error,omitempty"`
	ConnectsPerS  float64 `json:"connects_per_second"`
	TLSFull       int     `json:"tls_handshakes_full,omitempty"`
	TLSResumed    int     `json:"tls_handshakes_resumed,omitempty"`
	ConnectP50Ms  float64 `json:"connect_p50_ms"`
	ConnectP99Ms  float64 `json:"connect_p99_ms"`
	HeldConnected int     `json:"held_connected"`
}

// WSSummary is what wsconns writes at the end.
type WSSummary struct {
	URL   string   `json:"url"`
	Conns int      `json:"conns"`
	Waves []WSWave `json:"waves"`
}

// wsConn is one NATS client connection and the TLS session it keeps.
type wsConn struct {
	sessions tls.ClientSessionCache
	ws       *websocket.Conn
	done     chan struct{}
}

func runWS(ctx context.Context, c wsConfig) error {
	if c.conns < 1 || c.parallel < 1 || c.waves < 1 {
		return errors.New("-conns, -parallel and -waves must be at least 1")
	}
	var tlsCfg *tls.Config
	if strings.HasPrefix(c.url, "wss://") {
		tlsCfg = &tls.Config{ServerName: c.serverName}
		if c.ca != "" {
			pem, err := os.ReadFile(c.ca)
			if err != nil {
				return err
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return fmt.Errorf("%s: no certificate", c.ca)
			}
			tlsCfg.RootCAs = pool
		}
	}
	var dialers []*websocket.Dialer
	addrs := []string{""}
	if c.localAddrs != "" {
		addrs = strings.Split(c.localAddrs, ",")
	}
	for _, a := range addrs {
		nd := &net.Dialer{Timeout: 10 * time.Second}
		if a != "" {
			nd.LocalAddr = &net.TCPAddr{IP: net.ParseIP(strings.TrimSpace(a))}
		}
		dialers = append(dialers, &websocket.Dialer{NetDialContext: nd.DialContext, HandshakeTimeout: 10 * time.Second,
			ReadBufferSize: 512, WriteBufferSize: 512})
	}
	conns := make([]*wsConn, c.conns)
	for i := range conns {
		conns[i] = &wsConn{}
		if tlsCfg != nil {
			conns[i].sessions = tls.NewLRUClientSessionCache(1)
		}
	}
	sum := WSSummary{URL: c.url, Conns: c.conns}
	for w := 1; w <= c.waves && ctx.Err() == nil; w++ {
		if w > 1 {
			for _, wc := range conns {
				wc.close()
			}
		}
		wave := connectWave(ctx, c, dialers, tlsCfg, conns)
		wave.Wave = w
		fmt.Fprintf(os.Stderr, "natspeer wsconns: wave %d: %d connected, %d failed in %.2f s (%.0f/s), TLS %d full %d resumed\n",
			w, wave.Connected, wave.Failed, wave.Seconds, wave.ConnectsPerS, wave.TLSFull, wave.TLSResumed)
		select {
		case <-ctx.Done():
		case <-time.After(c.hold):
		}
		for _, wc := range conns {
			if wc.ws != nil {
				select {
				case <-wc.done:
				default:
					wave.HeldConnected++
				}
			}
		}
		sum.Waves = append(sum.Waves, wave)
	}
	for _, wc := range conns {
		wc.close()
	}
	b, _ := json.MarshalIndent(sum, "", "  ")
	b = append(b, '\n')
	if c.summary == "-" {
		_, err := os.Stdout.Write(b)
		return err
	}
	return os.WriteFile(c.summary, b, 0o644)
}

func (wc *wsConn) close() {
	if wc.ws != nil {
		_ = wc.ws.Close()
		<-wc.done
		wc.ws = nil
	}
}

// connectWave opens every connection, -parallel at a time (and at most -connect-rate a second).
func connectWave(ctx context.Context, c wsConfig, dialers []*websocket.Dialer, tlsCfg *tls.Config, conns []*wsConn) WSWave {
	var (
		wave      WSWave
		mu        sync.Mutex
		lat       []time.Duration
		full, res atomic.Int64
		wg        sync.WaitGroup
	)
	next := make(chan int)
	start := time.Now()
	var last atomic.Int64
	for range c.parallel {
		wg.Go(func() {
			for i := range next {
				t0 := time.Now()
				d := *dialers[i%len(dialers)]
				if tlsCfg != nil {
					cfg := tlsCfg.Clone()
					cfg.ClientSessionCache = conns[i].sessions
					d.TLSClientConfig = cfg
				}
				ws, err := openNATS(ctx, &d, c.url)
				mu.Lock()
				if err != nil {
					wave.Failed++
					if wave.FirstErr == "" {
						wave.FirstErr = err.Error()
					}
					mu.Unlock()
					continue
				}
				wave.Connected++
				lat = append(lat, time.Since(t0))
				mu.Unlock()
				last.Store(int64(time.Since(start)))
				if tc, ok := ws.NetConn().(*tls.Conn); ok {
					if tc.ConnectionState().DidResume {
						res.Add(1)
					} else {
						full.Add(1)
					}
				}
				wc := conns[i]
				wc.ws, wc.done = ws, make(chan struct{})
				go hold(ws, wc.done)
			}
		})
	}
	var tick <-chan time.Time
	if c.rate > 0 {
		t := time.NewTicker(time.Duration(float64(time.Second) / c.rate))
		defer t.Stop()
		tick = t.C
	}
	for i := range conns {
		if tick != nil {
			select {
			case <-tick:
			case <-ctx.Done():
			}
		}
		if ctx.Err() != nil {
			break
		}
		next <- i
	}
	close(next)
	wg.Wait()
	wave.Seconds = time.Duration(last.Load()).Seconds()
	if wave.Seconds > 0 {
		wave.ConnectsPerS = float64(wave.Connected) / wave.Seconds
	}
	wave.TLSFull, wave.TLSResumed = int(full.Load()), int(res.Load())
	if len(lat) > 0 {
		slices.Sort(lat)
		wave.ConnectP50Ms = float64(lat[len(lat)/2].Microseconds()) / 1000
		wave.ConnectP99Ms = float64(lat[len(lat)*99/100].Microseconds()) / 1000
	}
	return wave
}

// openNATS upgrades to WebSocket and does the NATS handshake: INFO from the server, CONNECT and
// PING from the client, PONG from the server.
func openNATS(ctx context.Context, d *websocket.Dialer, url string) (*websocket.Conn, error) {
	ws, _, err := d.DialContext(ctx, url, nil)
	if err != nil {
		return nil, err
	}
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	r := &wsReader{ws: ws}
	line, err := r.line()
	if err != nil || !strings.HasPrefix(line, "INFO ") {
		ws.Close()
		return nil, fmt.Errorf("want INFO, got %q: %v", line, err)
	}
	connect := "CONNECT {\"verbose\":false,\"pedantic\":false,\"lang\":\"natspeer\",\"version\":\"0\",\"protocol\":1,\"headers\":false}\r\nPING\r\n"
	if err := ws.WriteMessage(websocket.BinaryMessage, []byte(connect)); err != nil {
		ws.Close()
		return nil, err
	}
	for {
		line, err := r.line()
		if err != nil {
			ws.Close()
			return nil, err
		}
		switch {
		case line == "PONG":
			_ = ws.SetReadDeadline(time.Time{})
			return ws, nil
		case strings.HasPrefix(line, "-ERR"):
			ws.Close()
			return nil, errors.New(line)
		}
	}
}

// hold reads the server's protocol lines and answers its PINGs until the connection ends.
func hold(ws *websocket.Conn, done chan struct{}) {
	defer close(done)
	r := &wsReader{ws: ws}
	for {
		line, err := r.line()
		if err != nil {
			return
		}
		if line == "PING" {
			if err := ws.WriteMessage(websocket.BinaryMessage, []byte("PONG\r\n")); err != nil {
				return
			}
		}
	}
}

// wsReader reads protocol lines from WebSocket messages (a message may hold several lines, a
// line may span messages).
type wsReader struct {
	ws  *websocket.Conn
	buf bytes.Buffer
}

func (r *wsReader) line() (string, error) {
	for {
		if i := bytes.Index(r.buf.Bytes(), []byte("\r\n")); i >= 0 {
			l := string(r.buf.Next(i + 2))
			return strings.TrimSuffix(l, "\r\n"), nil
		}
		_, m, err := r.ws.NextReader()
		if err != nil {
			return "", err
		}
		if _, err := r.buf.ReadFrom(bufio.NewReader(m)); err != nil {
			return "", err
		}
	}
}
