package frontend

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// Environment of the idle-client child process.
const (
	envIdleConns = "DROVER_IDLE_CONNS"       // how many idle connections to measure (default 2000)
	envIdleURL   = "DROVER_IDLE_CLIENT_URL"  // set in the child: the frontend to dial
	envIdleFirst = "DROVER_IDLE_CLIENT_FROM" // set in the child: first device index
	envIdleCA    = "DROVER_IDLE_CLIENT_CA"   // set in the child for wss://: the CA to trust

	envIdleHeapProfile = "DROVER_IDLE_HEAP_PROFILE" // write the server's heap profile to this path (.ws, .wss)
)

// memSnapshot returns the live heap and the goroutine stacks in use, after
// two collections.
func memSnapshot() (heap, stack int64) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc), int64(ms.StackInuse)
}

// TestIdleConnectionMemory measures what one idle device connection costs the
// frontend: heap (gorilla's Conn and its 256-byte read buffer, the conn and
// device state, the timer, the socket) and goroutine stack (the parked read
// loop). The clients run in a child process, so that only the server's side
// is counted. N is 2000, or $DROVER_IDLE_CONNS:
//
//	go test -run TestIdleConnectionMemory -v ./frontend/
//	DROVER_IDLE_CONNS=8000 go test -run TestIdleConnectionMemory -v ./frontend/
//	DROVER_IDLE_HEAP_PROFILE=/tmp/idle go test -run TestIdleConnectionMemory -memprofilerate 1 ./frontend/
//
// (one process holds N sockets here and the child N more: keep N well under
// the open-files limit, 20,000 on the build machine.)
//
// The wss:// subtest measures the same over TLS (the frontend's own, with an
// ECDSA P-256 certificate): crypto/tls's Conn with its record buffers and
// the two directions' AES-GCM states come on top.
func TestIdleConnectionMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("opens thousands of connections")
	}
	n := 2000
	if s := os.Getenv(envIdleConns); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			t.Fatalf("%s=%q: want a positive number", envIdleConns, s)
		}
		n = v
	}
	t.Run("ws", func(t *testing.T) { idleConnectionMemory(t, n, nil, 16<<10) })
	t.Run("wss", func(t *testing.T) { idleConnectionMemory(t, n/2, newTLSFiles(t, "edge"), 48<<10) })
}

// idleConnectionMemory measures n idle connections (over TLS with tf) and
// fails above limit bytes each.
func idleConnectionMemory(t *testing.T, n int, tf *tlsFiles, limit float64) {
	e := startWith(t, n, func(c *Config) {
		c.MaxConnections = n
		c.Admission.Rate = 0
		if tf != nil {
			tf.withTLS(false)(c)
			c.TLS.HandshakeRate = 0
		}
	})
	url, ca := e.url, ""
	if tf != nil {
		url, ca = e.wssURL(), tf.ca.WriteCA(t, tf.dir, "ca.pem")
	}
	heap0, stack0 := memSnapshot()

	cmd := exec.Command(os.Args[0], "-test.run=^TestIdleClientProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), envIdleURL+"="+url, envIdleConns+"="+strconv.Itoa(n), envIdleFirst+"=0", envIdleCA+"="+ca)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Wait()
	})
	lines := bufio.NewScanner(stdout)
	for lines.Scan() && !strings.HasPrefix(lines.Text(), "READY") {
		if strings.HasPrefix(lines.Text(), "FAIL") {
			t.Fatalf("client process: %s", lines.Text())
		}
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	waitFor(t, time.Minute, fmt.Sprintf("%d connections", n), func() bool { return e.metric(e.f.m.connections) == float64(n) })
	took := time.Since(begin)

	heap1, stack1 := memSnapshot()
	if path := os.Getenv(envIdleHeapProfile); path != "" {
		// Where the heap goes, with the connections open: run with
		// -memprofilerate 1 and read it with go tool pprof -sample_index=inuse_space.
		f, err := os.Create(path + "." + strings.TrimPrefix(t.Name(), "TestIdleConnectionMemory/"))
		if err != nil {
			t.Fatal(err)
		}
		if err := pprof.WriteHeapProfile(f); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	heap, stack := float64(heap1-heap0)/float64(n), float64(stack1-stack0)/float64(n)
	t.Logf("%d idle connections (opened in %s, %.0f/s): heap %.0f B + stack %.0f B = %.0f B (%.1f KiB) per connection",
		n, took.Round(time.Millisecond), float64(n)/took.Seconds(), heap, stack, heap+stack, (heap+stack)/1024)
	if !raceEnabled && heap+stack > limit {
		t.Errorf("an idle connection costs %.0f B, want at most %.0f KiB", heap+stack, limit/1024)
	}
}

// TestIdleClientProcess is the child of TestIdleConnectionMemory: it opens
// the connections, says READY, and holds them until its stdin closes.
func TestIdleClientProcess(t *testing.T) {
	url := os.Getenv(envIdleURL)
	if url == "" {
		t.Skip("run by TestIdleConnectionMemory")
	}
	n, _ := strconv.Atoi(os.Getenv(envIdleConns))
	from, _ := strconv.Atoi(os.Getenv(envIdleFirst))
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second, ReadBufferSize: 256, WriteBufferSize: 256}
	if ca := os.Getenv(envIdleCA); ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		d.TLSClientConfig = &tls.Config{RootCAs: pool}
	}
	conns := make([]*websocket.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := from; i < from+n; i++ {
		h := http.Header{}
		h.Set(HeaderDevice, deviceID(i))
		h.Set("Authorization", "Bearer "+tokenOf(i))
		c, _, err := d.Dial(url, h)
		if err != nil {
			fmt.Printf("FAIL dial %d: %v\n", i, err)
			t.Fatalf("dial %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	fmt.Println("READY")
	_, _ = io.Copy(io.Discard, os.Stdin)
}
