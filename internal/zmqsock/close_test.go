package zmqsock

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
)

// blockedReaders counts zmq4 connection readers parked handing a message
// to their socket.
func blockedReaders() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "[chan send") && strings.Contains(g, "QReader).listen") ||
			strings.Contains(g, "[chan send") && strings.Contains(g, "qreader).listen") {
			n++
		}
	}
	return n
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// overfed returns a DEALER whose peer has sent it more messages than its
// socket's channel holds, none of them received: its connection reader is
// blocked, as a drainer's is when it stops while the router still acks.
func overfed(t *testing.T) zmq4.Socket {
	t.Helper()
	ctx := context.Background()
	router := zmq4.NewRouter(ctx, zmq4.WithTimeout(5*time.Second))
	t.Cleanup(func() { _ = Close(router) })
	if err := router.Listen("tcp://127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	dealer := zmq4.NewDealer(ctx, zmq4.WithID(zmq4.SocketIdentity("d")), zmq4.WithTimeout(5*time.Second))
	if err := dealer.Dial("tcp://" + router.Addr().String()); err != nil {
		t.Fatal(err)
	}
	if err := dealer.Send(zmq4.NewMsgString("hello")); err != nil {
		t.Fatal(err)
	}
	msg, err := router.Recv()
	if err != nil {
		t.Fatal(err)
	}
	before := blockedReaders()
	for i := 0; i < 30; i++ {
		if err := router.Send(zmq4.NewMsgFrom(msg.Frames[0], []byte("ack"))); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the dealer's reader to block on its full channel", func() bool { return blockedReaders() > before })
	return dealer
}

func TestCloseLeavesNoReaderBlocked(t *testing.T) {
	base := blockedReaders()
	d := overfed(t)
	if err := Close(d); err != nil {
		t.Fatalf("close: %v", err)
	}
	waitFor(t, "the blocked reader to return after Close", func() bool { return blockedReaders() == base })

	// The reason this package exists: a plain Close leaves the reader
	// blocked for good. When this fails, zmq4 has fixed it upstream and
	// zmqsock.Close can become socket.Close again.
	d = overfed(t)
	_ = d.Close()
	time.Sleep(200 * time.Millisecond) // a leak is the absence of an event: give it time to not happen
	if blockedReaders() == base {
		t.Fatal("a plain zmq4 Close no longer leaks the blocked reader: upstream is fixed, drop zmqsock")
	}
}
