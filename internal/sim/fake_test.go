package sim

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/drover-telemetry/drover/telemetry"
)

const testSeed = "test-seed"

// fakeFrontend is a WebSocket server that acks like a drover frontend: it checks a device's token,
// "stores" every valid frame (records its seqs) and acks the frame's last seq. Its behaviour can
// be changed to refuse upgrades, drop connections, close with a code, delay or withhold acks, or
// answer with a downlink Error.
type fakeFrontend struct {
	srv *httptest.Server

	// Behaviour. Set before devices connect.
	refuse int // HTTP status to refuse every upgrade with (0: accept)
	// refuseFirst refuses only each device's first attempt (a frontend that holds its place in
	// line and lets it in when it comes back).
	refuseFirst bool
	retryAfter  string // Retry-After header of refusals
	closeCode   int    // close with this code right after the upgrade (0: don't)
	// Every dropEvery-th frame of a connection is stored but not acked, and the connection is
	// then ended by dropHow ("tcp": abrupt, or a close code), while dropBudget lasts.
	dropEvery  int
	dropHow    string
	dropBudget atomic.Int64
	ackDelay   time.Duration
	// Frames received before slowUntil are acked after slowAckDelay instead of ackDelay.
	slowUntil    time.Time
	slowAckDelay time.Duration
	// withholdBudget connections (counted down) receive and store frames but never ack them.
	withholdBudget atomic.Int64
	// stall makes the server accept connections and then never read from them.
	stall chan struct{}
	// errorBudget connections answer their first frame with a downlink Error of errorCode.
	errorBudget atomic.Int64
	errorCode   uint32

	open  atomic.Int64
	text  atomic.Int64 // text frames received
	bin   atomic.Int64 // binary frames received
	peers sync.Map     // remote IP → true

	mu         sync.Mutex
	received   map[string]map[uint64]int // device → seq → times received
	stored     map[string]uint64         // device → highest contiguous seq received
	attempts   map[string][]time.Time    // device → upgrade attempts
	violations []string
	closes     map[int]int // close codes received from devices
}

func newFakeFrontend(t testing.TB, setup func(*fakeFrontend)) *fakeFrontend {
	t.Helper()
	s := &fakeFrontend{
		received: map[string]map[uint64]int{},
		stored:   map[string]uint64{},
		attempts: map[string][]time.Time{},
		closes:   map[int]int{},
	}
	if setup != nil {
		setup(s)
	}
	s.srv = httptest.NewServer(http.HandlerFunc(s.handle))
	t.Cleanup(s.srv.Close)
	if s.stall != nil {
		t.Cleanup(func() { close(s.stall) }) // runs before srv.Close
	}
	return s
}

// url returns the server's ws:// URL, without a path (the sim adds /v1/ingest).
func (s *fakeFrontend) url() string { return "ws" + strings.TrimPrefix(s.srv.URL, "http") }

func (s *fakeFrontend) violate(format string) {
	s.mu.Lock()
	s.violations = append(s.violations, format)
	s.mu.Unlock()
}

func (s *fakeFrontend) handle(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != IngestPath {
		http.NotFound(w, r)
		return
	}
	id, token := r.Header.Get("X-Drover-Device"), strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	if id == "" {
		id, token = r.URL.Query().Get("device"), r.URL.Query().Get("token")
	}
	s.mu.Lock()
	s.attempts[id] = append(s.attempts[id], time.Now())
	first := len(s.attempts[id]) == 1
	s.mu.Unlock()
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		s.peers.Store(host, true)
	}
	if s.refuse != 0 && (first || !s.refuseFirst) {
		if s.retryAfter != "" {
			w.Header().Set("Retry-After", s.retryAfter)
		}
		http.Error(w, "refused", s.refuse)
		return
	}
	if token != Token(testSeed, id) {
		http.Error(w, "bad credentials", http.StatusUnauthorized)
		return
	}
	up := websocket.Upgrader{ReadBufferSize: 1024, WriteBufferSize: 1024}
	conn, err := up.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	go s.serve(id, conn)
}

// downlink is a message the server's writer goroutine sends when due.
type downlink struct {
	data []byte
	due  time.Time
	mt   int
}

func (s *fakeFrontend) serve(id string, conn *websocket.Conn) {
	s.open.Add(1)
	defer s.open.Add(-1)
	defer conn.Close()
	if s.closeCode != 0 {
		conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(s.closeCode, "try again later"), time.Now().Add(time.Second))
		return
	}
	if s.stall != nil {
		<-s.stall
		return
	}
	withhold := s.withholdBudget.Add(-1) >= 0
	sendError := s.errorBudget.Add(-1) >= 0

	// Downlinks go out through one writer goroutine, in order, each when due.
	out := make(chan downlink, 64)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		for m := range out {
			time.Sleep(time.Until(m.due))
			if conn.WriteMessage(m.mt, m.data) != nil {
				return
			}
		}
	}()
	defer func() { close(out); <-writerDone }()

	frames := 0
	for {
		mt, data, err := conn.ReadMessage()
		if err != nil {
			if ce, ok := err.(*websocket.CloseError); ok {
				s.mu.Lock()
				s.closes[ce.Code]++
				s.mu.Unlock()
			}
			return
		}
		text := mt == websocket.TextMessage
		if text {
			s.text.Add(1)
		} else {
			s.bin.Add(1)
		}
		u, err := telemetry.DecodeUplink(data, text, time.Now(), telemetry.DefaultLimits())
		if err != nil {
			s.violate(id + ": invalid frame: " + err.Error())
			conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseInvalidFramePayloadData, "invalid"), time.Now().Add(time.Second))
			return
		}
		frames++
		if sendError {
			// Nothing of this frame is stored, nor of the frames after it: an ack of a later
			// frame would cover the refused one. The device is expected to reconnect.
			if frames == 1 {
				b, _ := telemetry.EncodeDownlink(telemetry.NewError(s.errorCode, "overloaded"), text)
				out <- downlink{data: b, mt: mt}
			}
			continue
		}
		s.store(id, u)
		if s.dropEvery > 0 && frames%s.dropEvery == 0 && s.dropBudget.Add(-1) >= 0 {
			if s.dropHow == "tcp" {
				conn.NetConn().Close()
			} else {
				code, _ := strconv.Atoi(s.dropHow)
				conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, ""), time.Now().Add(time.Second))
			}
			return
		}
		if withhold {
			continue
		}
		b, _ := telemetry.EncodeDownlink(telemetry.NewAck(u.LastSeq()), text)
		delay := s.ackDelay
		if time.Now().Before(s.slowUntil) {
			delay = s.slowAckDelay
		}
		out <- downlink{data: b, due: time.Now().Add(delay), mt: mt}
	}
}

// store records a frame's readings and checks that the device sends without gaps.
func (s *fakeFrontend) store(id string, u *telemetry.Uplink) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.received[id]
	if m == nil {
		m = map[uint64]int{}
		s.received[id] = m
	}
	for _, r := range u.Readings {
		if _, ok := s.stored[id]; !ok {
			s.stored[id] = r.Seq - 1 // the device's first seq
		}
		if r.Seq > s.stored[id]+1 {
			s.violations = append(s.violations, id+": gap before seq "+strconv.FormatUint(r.Seq, 10))
		}
		m[r.Seq]++
		for m[s.stored[id]+1] > 0 {
			s.stored[id]++
		}
	}
}

// duplicates returns how many readings were received more than once, in all.
func (s *fakeFrontend) duplicates() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, m := range s.received {
		for _, c := range m {
			n += c - 1
		}
	}
	return n
}

func (s *fakeFrontend) attemptsOf(id string) []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Time(nil), s.attempts[id]...)
}

func (s *fakeFrontend) totalAttempts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, a := range s.attempts {
		n += len(a)
	}
	return n
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// testConfig is a fast configuration against urls.
func testConfig(urls ...string) Config {
	return Config{
		URLs:       urls,
		Devices:    4,
		TokenSeed:  testSeed,
		Rate:       2000,
		BackoffMin: 10 * time.Millisecond,
		BackoffMax: 80 * time.Millisecond,
		AckTimeout: 5 * time.Second,
		Seed:       1,
	}
}

// startFleet starts a fleet and stops it (waiting for it) when the test ends.
func startFleet(t *testing.T, cfg Config) (*Fleet, context.CancelFunc) {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	f, err := New(cfg, logger, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- f.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-runErr:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("fleet did not stop within 10s of cancel")
		}
	})
	return f, cancel
}

// waitDone waits for the fleet to finish on its own.
func waitDone(t *testing.T, f *Fleet, timeout time.Duration) {
	t.Helper()
	select {
	case <-f.Done():
	case <-time.After(timeout):
		s := f.Stats()
		t.Fatalf("fleet not done after %s: %+v", timeout, s)
	}
}
