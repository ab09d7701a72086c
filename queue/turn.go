package queue

import (
	"context"
	"sync"
)

// Turn is one append's place in an order that several goroutines must keep
// (one sender's batches, each appended by a goroutine of its own, in the
// order they arrived): the goroutine that received a batch takes a new
// Turn and remembers the previous one, under its own lock; the appending
// goroutine waits for the previous Turn before its first Begin and marks
// its own placed after its last Begin, so that the appends keep the order
// and still share group commits. A nil *Turn is always placed.
type Turn struct {
	placed chan struct{}
	once   sync.Once
}

// NewTurn returns a Turn not yet placed.
func NewTurn() *Turn { return &Turn{placed: make(chan struct{})} }

// Placed marks t placed: its appends have begun (or it needs none, or
// failed). It may be called more than once; it must be called at least
// once, or the next Turn waits for ever.
func (t *Turn) Placed() { t.once.Do(func() { close(t.placed) }) }

// Wait waits until t is placed (at once for a nil t), or ctx ends.
func (t *Turn) Wait(ctx context.Context) error {
	if t == nil {
		return nil
	}
	select {
	case <-t.placed:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
