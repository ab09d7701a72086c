package frontend

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"runtime"
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
//
// (one process holds N sockets here and the child N more: keep N well under
// the open-files limit, 20,000 on the build machine.)
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
	e := startWith(t, n, func(c *Config) { c.MaxConnections = n })
	heap0, stack0 := memSnapshot()

	cmd := exec.Command(os.Args[0], "-test.run=^TestIdleClientProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), envIdleURL+"="+e.url, envIdleConns+"="+strconv.Itoa(n), envIdleFirst+"=0")
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
	heap, stack := float64(heap1-heap0)/float64(n), float64(stack1-stack0)/float64(n)
	t.Logf("%d idle connections (opened in %s, %.0f/s): heap %.0f B + stack %.0f B = %.0f B (%.1f KiB) per connection",
		n, took.Round(time.Millisecond), float64(n)/took.Seconds(), heap, stack, heap+stack, (heap+stack)/1024)
	if !raceEnabled && heap+stack > 16<<10 {
		t.Errorf("an idle connection costs %.0f B, want at most 16 KiB", heap+stack)
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
