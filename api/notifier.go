package api

import (
	"context"
	"sync"
	"time"
)

// notifier wakes waiting requests of this replica: command waits by
// command id, dispatch long polls by frontend. For each frontend it also
// keeps the devices that may have work (a new command, a connect, a
// report), so that a wake-up reads those devices' commands, not every open
// command: the full scan (resend delays, other replicas) runs at most once
// per -command-poll per frontend.
type notifier struct {
	mu       sync.Mutex
	cmds     map[string]*watch
	fes      map[string]*watch
	work     map[string]map[string]struct{} // frontend → devices
	lastFull map[string]time.Time           // frontend → last full scan
}

type watch struct {
	ch chan struct{}
	n  int
	// final is the command's final row, when the write that made it final
	// read it (a report's RETURNING): set before ch is closed, read after.
	final *Command
}

func newNotifier() *notifier {
	return &notifier{cmds: map[string]*watch{}, fes: map[string]*watch{}, work: map[string]map[string]struct{}{},
		lastFull: map[string]time.Time{}}
}

func (n *notifier) watchKey(m map[string]*watch, key string) (*watch, func()) {
	n.mu.Lock()
	defer n.mu.Unlock()
	w := m[key]
	if w == nil {
		w = &watch{ch: make(chan struct{})}
		m[key] = w
	}
	w.n++
	return w, func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		w.n--
		if w.n == 0 && m[key] == w {
			delete(m, key)
		}
	}
}

func (n *notifier) fire(m map[string]*watch, keys ...string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, k := range keys {
		if w := m[k]; w != nil {
			close(w.ch)
			delete(m, k)
		}
	}
}

// allCommandsChanged wakes every command waiter: a wake-up may have been
// missed (the LISTEN connection was lost), so each reads its row again and
// polls until it listens again.
func (n *notifier) allCommandsChanged() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for k, w := range n.cmds {
		close(w.ch)
		delete(n.cmds, k)
	}
}

// watchCommand returns a watch whose channel is closed when the command
// changes; call release when done waiting.
func (n *notifier) watchCommand(id string) (*watch, func()) { return n.watchKey(n.cmds, id) }

// watchingCommand reports whether a request of this replica waits for
// the command.
func (n *notifier) watchingCommand(id string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cmds[id] != nil
}

// commandsFinal wakes the waiters of commands that became final, handing
// them the rows read by the write that made them final (no read again).
func (n *notifier) commandsFinal(rows map[string]*Command) {
	if len(rows) == 0 {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for id, c := range rows {
		if w := n.cmds[id]; w != nil {
			w.final = c
			close(w.ch)
			delete(n.cmds, id)
		}
	}
}

// commandsChanged wakes the waiters of these commands; callers name only
// commands that became final (finalIDs). A waiter wants the outcome: woken
// by every step (sent, delivered, each progress report) it read its row
// again at each, and at 500 commands/s on PostgreSQL those reads were 41%
// of the api's CPU (docs/performance.md); the state reached short of final
// is read once, when its wait ends.
func (n *notifier) commandsChanged(ids ...string) { n.fire(n.cmds, ids...) }

// finalIDs returns the ids of the events that end their command.
func finalIDs(evs []CommandEvent) []string {
	var ids []string
	for _, ev := range evs {
		if cmdFinal(ev.State) {
			ids = append(ids, ev.ID)
		}
	}
	return ids
}

// watchFrontend returns a channel closed when a frontend may have work.
func (n *notifier) watchFrontend(fe string) (<-chan struct{}, func()) {
	w, release := n.watchKey(n.fes, fe)
	return w.ch, release
}

// maxWorkDevices bounds the devices a frontend's wake-ups remember; past
// it the next pass is a full scan.
const maxWorkDevices = 10_000

// addWork records that devices of frontend fe may have commands due, and
// wakes its long poll.
func (n *notifier) addWork(fe string, devs ...string) {
	n.mu.Lock()
	set := n.work[fe]
	if set == nil {
		set = map[string]struct{}{}
		n.work[fe] = set
	}
	for _, d := range devs {
		if len(set) >= maxWorkDevices {
			delete(n.lastFull, fe) // too many: scan them all
			break
		}
		set[d] = struct{}{}
	}
	n.mu.Unlock()
	n.fire(n.fes, fe)
}

// takeWork returns the devices recorded for fe (and forgets them), and
// whether a full scan is due instead (at most one per every).
func (n *notifier) takeWork(fe string, now time.Time, every time.Duration) (devs []string, full bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	set := n.work[fe]
	delete(n.work, fe)
	if now.Sub(n.lastFull[fe]) >= every {
		n.lastFull[fe] = now
		return nil, true
	}
	for d := range set {
		devs = append(devs, d)
	}
	return devs, false
}

// wakeDeviceFrontend wakes the frontend that holds the device, if any,
// for that device.
func (s *Server) wakeDeviceFrontend(ctx context.Context, devID string) {
	var fe string
	err := s.db.rdb.QueryRowContext(ctx, `SELECT frontend FROM device_presence WHERE device_id = $1 AND connected = 1`, devID).Scan(&fe)
	if err == nil {
		s.notify.addWork(fe, devID)
	}
}
