package api

import (
	"cmp"
	"slices"
	"strings"
	"sync"
	"time"
)

// Hand-off at create (docs/commands.md, "Delivery"; docs/performance.md,
// "A command sent by its create"). A command created for a device that is
// connected, with nothing of its own before it (no command queued or sent
// and not yet received), to a frontend whose long poll this replica
// answers, is written already marked sent to that frontend, by the
// create's own transaction, and handed to the poll in memory. The
// frontend's poll then answers without a dispatch: no read of the device's
// open commands and no second write of the command, whose commit the
// round trip would otherwise wait for as well.
//
// What a hand-off risks, and why it is safe: the row says sent before the
// frontend has it, as a dispatch's mark does while its answer is on the
// way. If the hand-off never reaches the frontend (this replica dies, the
// frontend's next poll goes to another replica, the frontend dies), the
// command is an attempt that got no report, and the dispatch sends it
// again after the resend delay, or as soon as the device reconnects (the
// rules in commands_delivery.go). A hand-off is taken only while it is
// younger than the resend delay and not expired, so that it never
// competes with that resend nor delivers an expired command. Order holds:
// a device's later command is created queued while this one is sent and
// unreported, and it waits for the dispatch, which holds it back behind
// this one. A sent command cannot be cancelled (409), so a hand-off never
// delivers a cancelled command.

// handoffRecent is how long after a frontend's last poll of this replica
// ended a create still hands commands to it: a frontend polls again as
// soon as an answer is written, so a longer gap means it polls elsewhere,
// or not at all.
const handoffRecent = 2 * time.Second

// maxHandoffs bounds the commands waiting in memory for one frontend's
// poll; past it creates write them queued, for the dispatch.
const maxHandoffs = 10_000

// handoffs holds, per frontend, the commands created sent to it that its
// next poll of this replica answers.
type handoffs struct {
	mu  sync.Mutex
	fes map[string]*frontendHandoffs
}

type frontendHandoffs struct {
	polls    int       // in progress
	lastPoll time.Time // when the last one ended
	ready    []handoff
}

type handoff struct {
	cmd DispatchedCommand
	at  time.Time
}

func newHandoffs() *handoffs { return &handoffs{fes: map[string]*frontendHandoffs{}} }

// pollBegin records that fe polls this replica; call the returned func
// when the poll ends.
func (h *handoffs) pollBegin(fe string) (end func()) {
	h.mu.Lock()
	f := h.frontend(fe)
	f.polls++
	h.mu.Unlock()
	return func() {
		h.mu.Lock()
		f.polls--
		f.lastPoll = time.Now()
		h.mu.Unlock()
	}
}

// takes reports whether a command created now may be handed to f's
// poll: one polls, or did lately, and there is room.
func (f *frontendHandoffs) takes(now time.Time) bool {
	return (f.polls > 0 || now.Sub(f.lastPoll) < handoffRecent) && len(f.ready) < maxHandoffs
}

// takes reports whether a command created now for a device held by fe
// may be handed to fe's poll.
func (h *handoffs) takes(fe string, now time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	f := h.fes[fe]
	return f != nil && f.takes(now)
}

// polling returns the frontends that takes would answer true for
// (PostgreSQL's create decides in its statement).
func (h *handoffs) polling(now time.Time) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for fe, f := range h.fes {
		if f.takes(now) {
			out = append(out, fe)
		}
	}
	return out
}

// put hands cmd, committed as sent to fe, to fe's next poll. The caller
// wakes the poll.
func (h *handoffs) put(fe string, cmd DispatchedCommand, at time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f := h.frontend(fe)
	f.ready = append(f.ready, handoff{cmd: cmd, at: at})
}

// frontend returns fe's entry, made if new; the caller holds h.mu.
func (h *handoffs) frontend(fe string) *frontendHandoffs {
	f := h.fes[fe]
	if f == nil {
		f = &frontendHandoffs{}
		h.fes[fe] = f
	}
	return f
}

// take returns the commands waiting for fe's poll that are younger than
// maxAge and not expired at now, and forgets them all; stale counts those
// left to the dispatch's resend.
func (h *handoffs) take(fe string, now time.Time, maxAge time.Duration) (cmds []DispatchedCommand, stale int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f := h.fes[fe]
	if f == nil || len(f.ready) == 0 {
		return nil, 0
	}
	nowMs := now.UnixMilli()
	for _, r := range f.ready {
		if now.Sub(r.at) >= maxAge || r.cmd.ExpiresAt <= nowMs {
			stale++
			continue
		}
		cmds = append(cmds, r.cmd)
	}
	f.ready = nil
	return cmds, stale
}

// mergeDispatched joins a poll's hand-offs and its dispatch's commands:
// each command once, sorted by device and seq, as the frontend expects
// (it writes a device's run of commands in order).
func mergeDispatched(handed, dispatched []DispatchedCommand) []DispatchedCommand {
	if len(handed) == 0 {
		return dispatched
	}
	seen := make(map[string]bool, len(dispatched))
	out := append([]DispatchedCommand(nil), dispatched...)
	for _, c := range dispatched {
		seen[c.ID] = true
	}
	for _, c := range handed {
		if !seen[c.ID] {
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(a, b DispatchedCommand) int {
		return cmp.Or(strings.Compare(a.DeviceID, b.DeviceID), cmp.Compare(a.Seq, b.Seq))
	})
	return out
}

// sentBy marks a command being created as sent to frontend fe: a
// hand-off (commands_handoff.go), its first attempt at its creation.
func (c *Command) sentBy(fe string) {
	at := c.CreatedAt
	c.State, c.SentAt, c.SentTo, c.Attempts = CmdSent, &at, fe, 1
}

// createdEvents are the events of a command's creation: queued, and sent
// when the create handed it to its frontend.
func createdEvents(c Command) []CommandEvent {
	evs := []CommandEvent{{ID: c.ID, DeviceID: c.DeviceID, State: CmdQueued, At: c.CreatedAt}}
	if c.State == CmdSent {
		evs = append(evs, CommandEvent{ID: c.ID, DeviceID: c.DeviceID, State: CmdSent, At: *c.SentAt})
	}
	return evs
}

// dispatched is c as a frontend's poll answers it.
func (c Command) dispatched() DispatchedCommand {
	return DispatchedCommand{ID: c.ID, DeviceID: c.DeviceID, Seq: uint64(c.Seq), Name: c.Name, Params: c.Params,
		ExpiresAt: c.ExpiresAt.UnixMilli()}
}
