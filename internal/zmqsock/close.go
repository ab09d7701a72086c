// Package zmqsock closes go-zeromq/zmq4 sockets without leaking their
// connection readers.
//
// zmq4 v0.17.0 reads each connection in a goroutine (qreader.listen,
// routerQReader.listen) that hands every message to the socket through a
// channel of ten. It looks at the socket's context only between messages:
// once it is blocked handing a message to a full channel, nothing but a
// receive wakes it. A socket whose owner stops reading while a peer is
// still sending (every stop: the reader returns on the cancelled context,
// the peer's acks and batches keep coming) therefore keeps one goroutine
// per connection, with its last message, for the life of the process.
//
// Close closes the socket and then receives until the channel is empty:
// every blocked reader completes its hand-over, finds the context done and
// returns. Upstream's fix would be a select on the context around the send;
// this package goes away with it.
package zmqsock

import (
	"context"
	"errors"

	"github.com/go-zeromq/zmq4"
)

// emptyAfter is how many receives in a row must find only the cancelled
// context before the channel counts as empty. Once the socket is closed a
// receive chooses at random between its context and a waiting message, so
// a channel holding anything survives n of them with probability 2^-n.
const emptyAfter = 48

// Close closes s and drains what its connection readers were still handing
// over, so that none of them stays blocked. It returns Close's error. It is
// safe while another goroutine is still in s.Recv: both only receive.
func Close(s zmq4.Socket) error {
	err := s.Close()
	for quiet := 0; quiet < emptyAfter; {
		if _, rerr := s.Recv(); errors.Is(rerr, context.Canceled) || errors.Is(rerr, context.DeadlineExceeded) {
			quiet++
		} else {
			quiet = 0
		}
	}
	return err
}
