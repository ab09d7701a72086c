package registry

import (
	"errors"
	"maps"
	"time"

	"github.com/drover-telemetry/drover/internal/auth"
)

// The in-memory registry is built for a million devices on every frontend
// and router: an O(1) lookup on the hot path (each connection's
// authentication, each reading's enrichment) with no lock, and at most
// ~200 bytes per device.
//
// A Registry is immutable; a change makes a new one and the Store swaps a
// pointer (readers never lock). Copying a million-entry map per change
// would cost ~100 ms, so a Registry is a big base map, shared by every
// Registry built from it, plus a small overlay of what changed since, also
// shared until the next change copies it. The overlay is folded into a new
// base when it grows past a share of the base (mergeThreshold), so a
// change costs the overlay's size and a fold is amortised over many
// changes. A lookup checks the overlay (empty most of the time: a length
// test) and then the base: two map lookups at worst.
//
// Per device the base holds the id (the map's key: a string header and
// its bytes) and a 40-byte rec with no pointer in it: the token's SHA-256,
// the index of its (fleet, class, region) in a shared table, the state.
// Labels are interned as triples: a fleet has few classes and regions, so
// a million devices share a few hundred triples. A rotation's previous
// token lives in a side map for the overlap only.

// State is a device's lifecycle state as the registry holds it.
type State uint8

// States. Only an active device may connect; readings already acked from
// a suspended or decommissioned device are still enriched.
const (
	StateActive State = iota
	StateSuspended
	StateDecommissioned
	// StateUnknown is a state this build does not know (a newer API): the
	// device is refused, as the safe side.
	StateUnknown
	// stateDeleted marks a deleted device in an overlay; never visible.
	stateDeleted
)

// ParseState reads a state as the API writes it; "" is active (the
// registry file holds active devices only).
func ParseState(s string) State {
	switch s {
	case "", "active":
		return StateActive
	case "suspended":
		return StateSuspended
	case "decommissioned":
		return StateDecommissioned
	}
	return StateUnknown
}

// String returns the state as the API writes it.
func (s State) String() string {
	switch s {
	case StateActive:
		return "active"
	case StateSuspended:
		return "suspended"
	case StateDecommissioned:
		return "decommissioned"
	}
	return "unknown"
}

// Labels are what a router adds to each reading of a device.
type Labels struct {
	Fleet, Class, Region string
}

// rec is one device in a Registry. No pointers: the garbage collector
// does not scan a million of them.
type rec struct {
	token  auth.Digest // SHA-256 of the current token, if hasToken
	labels uint32      // index into Registry.labels; 0 is no labels
	state  State
	// hasToken is false once every token of the device was revoked: it
	// cannot connect until a new one is issued.
	hasToken bool
}

// prevToken is a rotation's previous token, valid until (unix ms).
type prevToken struct {
	token auth.Digest
	until int64
}

// Registry is an immutable copy of the device registry. Its methods are
// safe for concurrent use and never lock.
type Registry struct {
	base map[string]rec // shared between registries; never written once published
	over map[string]rec // changes since base (stateDeleted: removed); nil when none
	prev map[string]prevToken
	// labels is the interned (fleet, class, region) table, append-only
	// and shared: a Registry reads only the entries that existed when it
	// was made.
	labels []Labels
	n      int // devices, tombstones not counted

	feed     string // the feed (database) the copy comes from; "" for a file
	version  int64  // the feed version it holds every change up to
	rejected []Rejection
}

// Errors of Authenticate and Check. ErrUnknownDevice and ErrBadToken must
// get one answer (nothing may tell which ids exist); the others are only
// returned to a caller that presented the device's valid token.
var (
	ErrUnknownDevice = errors.New("unknown device")
	ErrBadToken      = errors.New("bad token")
	// ErrSuspended: the token is right, and the device is suspended.
	ErrSuspended = errors.New("device suspended")
	// ErrDecommissioned: the token is right, and the device is
	// decommissioned (final).
	ErrDecommissioned = errors.New("device decommissioned")
	// ErrUnknownState: the token is right, and the device is in a state
	// this build does not know.
	ErrUnknownState = errors.New("device in an unknown state")
)

func (r *Registry) get(id string) (rec, bool) {
	if len(r.over) != 0 {
		if x, ok := r.over[id]; ok {
			return x, x.state != stateDeleted
		}
	}
	x, ok := r.base[id]
	return x, ok
}

// Len returns the number of devices, whatever their state.
func (r *Registry) Len() int { return r.n }

// Version returns the feed version the registry holds every change up to
// (0 for a registry file), and Feed the feed's identity ("" for a file).
func (r *Registry) Version() int64 { return r.version }

// Feed returns the identity of the feed (the API's database) the copy
// comes from; "" for a registry file.
func (r *Registry) Feed() string { return r.feed }

// Rejected returns the entries refused when the registry was built, in
// file order. The caller must not modify it.
func (r *Registry) Rejected() []Rejection { return r.rejected }

// Lookup returns what is known of the device with id: its labels and
// state, whatever the state (a suspended device's readings acked before
// its suspension are still enriched). TokenSHA256 is left empty: the
// registry holds hashes in binary, and Lookup does not allocate.
func (r *Registry) Lookup(id string) (Device, bool) {
	x, ok := r.get(id)
	if !ok {
		return Device{}, false
	}
	l := r.labels[x.labels]
	return Device{ID: id, Fleet: l.Fleet, Class: l.Class, Region: l.Region, State: x.state}, true
}

// Grant is what an authentication granted: which token the device
// presented, and until when that token is valid. A connection keeps it
// and is checked again (Check) when the registry changes or Until passes.
type Grant struct {
	// Token is the SHA-256 of the token presented.
	Token auth.Digest
	// Until is the end of a rotation's overlap when the device presented
	// its previous token; zero for its current token (no end).
	Until time.Time
}

// Authenticate checks a device's token at the current time (see
// Authorize).
func (r *Registry) Authenticate(id, token string) (Device, error) {
	d, _, err := r.Authorize(id, token, time.Now())
	return d, err
}

// Authorize checks that id may connect with token at now: the device is
// registered, the token is its current one or its previous one within a
// rotation's overlap, and the device is active. The token is compared in
// constant time, and an unknown device costs the same work as a known
// one, so that the time of an answer does not tell which ids exist. The
// error is ErrUnknownDevice or ErrBadToken (callers must answer both
// alike), or, only when the token is right, ErrSuspended,
// ErrDecommissioned or ErrUnknownState.
func (r *Registry) Authorize(id, token string, now time.Time) (Device, Grant, error) {
	// Always hashed and checked: the time taken says nothing of the id.
	x, g, err := r.check(id, auth.Hash(token), now)
	if token == "" && !errors.Is(err, ErrUnknownDevice) {
		err = ErrBadToken // an empty token is never a device's
	}
	if errors.Is(err, ErrUnknownDevice) || errors.Is(err, ErrBadToken) {
		return Device{}, Grant{}, err
	}
	l := r.labels[x.labels]
	return Device{ID: id, Fleet: l.Fleet, Class: l.Class, Region: l.Region, State: x.state}, g, err
}

// Check is Authorize for a token already hashed: what a connection
// authenticated with, checked again after a change of the registry or at
// the end of an overlap.
func (r *Registry) Check(id string, token auth.Digest, now time.Time) (Grant, error) {
	_, g, err := r.check(id, token, now)
	return g, err
}

// check is Check, with the device's record.
func (r *Registry) check(id string, token auth.Digest, now time.Time) (rec, Grant, error) {
	x, ok := r.get(id)
	cur := unknownDigest
	if ok && x.hasToken {
		cur = x.token
	}
	prev := prevToken{token: unknownDigest}
	if len(r.prev) != 0 {
		if p, okp := r.prev[id]; okp && ok {
			prev = p
		}
	}
	// Both compared every time, in constant time each.
	matchCur := cur.Equal(token) && ok && x.hasToken
	matchPrev := prev.token.Equal(token) && prev.until > now.UnixMilli()
	switch {
	case !ok:
		return x, Grant{}, ErrUnknownDevice
	case !matchCur && !matchPrev:
		return x, Grant{}, ErrBadToken
	}
	g := Grant{Token: token}
	if !matchCur {
		g.Until = time.UnixMilli(prev.until)
	}
	switch x.state {
	case StateActive:
		return x, g, nil
	case StateSuspended:
		return x, g, ErrSuspended
	case StateDecommissioned:
		return x, g, ErrDecommissioned
	}
	return x, g, ErrUnknownState
}

// unknownDigest stands in for the hash of an unknown device's token, only
// so that the work is the same: an unknown device is refused whatever the
// token.
var unknownDigest = auth.Hash("drover: no such device")

// Change is one device's new state, as the change feed carries it.
type Change struct {
	ID string
	// Deleted removes the device; the other fields are then unused.
	Deleted bool
	State   State
	Labels  Labels
	// HasToken says Token is the current token's hash; false: the device
	// has no token (all revoked).
	HasToken bool
	Token    auth.Digest
	// PrevUntil, when after now, makes PrevToken valid until then (unix
	// ms): a rotation's overlap.
	PrevToken auth.Digest
	PrevUntil int64
}

// each calls fn for every device of r (in no order), with its rec and
// its previous token if it has one.
func (r *Registry) each(fn func(id string, x rec, p *prevToken) error) error {
	visit := func(id string, x rec) error {
		var pp *prevToken
		if p, ok := r.prev[id]; ok {
			pp = &p
		}
		return fn(id, x, pp)
	}
	for id, x := range r.base {
		if _, shadowed := r.over[id]; shadowed {
			continue
		}
		if err := visit(id, x); err != nil {
			return err
		}
	}
	for id, x := range r.over {
		if x.state == stateDeleted {
			continue
		}
		if err := visit(id, x); err != nil {
			return err
		}
	}
	return nil
}

// builder makes Registries: from scratch (a snapshot, a file, a cache)
// and by applying changes to the last one it made. One goroutine at a
// time (the follower's).
type builder struct {
	cur    *Registry
	labels []Labels
	intern map[Labels]uint32
}

func newBuilder() *builder {
	return &builder{labels: []Labels{{}}, intern: map[Labels]uint32{{}: 0}}
}

// label interns l.
func (b *builder) label(l Labels) uint32 {
	if i, ok := b.intern[l]; ok {
		return i
	}
	i := uint32(len(b.labels))
	b.labels = append(b.labels, l)
	b.intern[l] = i
	return i
}

func (b *builder) rec(c Change) rec {
	return rec{token: c.Token, hasToken: c.HasToken, state: c.State, labels: b.label(c.Labels)}
}

// snapshotBuild is a Registry being built from scratch.
type snapshotBuild struct {
	b    *builder
	base map[string]rec
	prev map[string]prevToken
}

// startSnapshot starts a new Registry of about n devices. The builder's
// label table starts afresh too, so that labels nobody uses any more are
// dropped with the old Registry.
func (b *builder) startSnapshot(n int) *snapshotBuild {
	nb := newBuilder()
	*b = *nb
	return &snapshotBuild{b: b, base: make(map[string]rec, n)}
}

// startSnapshotKeepLabels starts a new Registry of about n devices with
// the builder's label table as it is (a cache lists its table first).
func (b *builder) startSnapshotKeepLabels(n int) *snapshotBuild {
	return &snapshotBuild{b: b, base: make(map[string]rec, n)}
}

// addLabel adds one device whose labels are the builder's triple li.
func (s *snapshotBuild) addLabel(c Change, li uint32) {
	s.base[c.ID] = rec{token: c.Token, hasToken: c.HasToken, state: c.State, labels: li}
	if c.PrevUntil > 0 {
		if s.prev == nil {
			s.prev = map[string]prevToken{}
		}
		s.prev[c.ID] = prevToken{token: c.PrevToken, until: c.PrevUntil}
	}
}

// add adds one device; a later add of the same id replaces it.
func (s *snapshotBuild) add(c Change) {
	if c.Deleted {
		delete(s.base, c.ID)
		delete(s.prev, c.ID)
		return
	}
	s.base[c.ID] = s.b.rec(c)
	if c.PrevUntil > 0 {
		if s.prev == nil {
			s.prev = map[string]prevToken{}
		}
		s.prev[c.ID] = prevToken{token: c.PrevToken, until: c.PrevUntil}
	} else {
		delete(s.prev, c.ID)
	}
}

// finish makes the Registry, and the builder's current one.
func (s *snapshotBuild) finish(feed string, version int64) *Registry {
	r := &Registry{base: s.base, prev: s.prev, labels: s.b.labels, n: len(s.base), feed: feed, version: version}
	s.b.cur = r
	return r
}

// mergeThreshold is the overlay size past which apply folds the overlay
// into a new base: a share of the base, so that the cost of copying the
// overlay at each change and of folding it balance; at least a few
// thousand, so that a small registry folds rarely.
func mergeThreshold(base int) int { return max(4096, base/32) }

// apply makes a new Registry: the builder's current one with changes
// applied in order, at version. Previous tokens past their overlap at now
// are dropped on the way.
func (b *builder) apply(changes []Change, version int64, now time.Time) *Registry {
	old := b.cur
	r := &Registry{base: old.base, n: old.n, feed: old.feed, version: version}
	over := make(map[string]rec, len(old.over)+len(changes))
	maps.Copy(over, old.over)
	prev := old.prev
	prevCopied := false
	copyPrev := func() {
		if prevCopied {
			return
		}
		nowMs := now.UnixMilli()
		np := make(map[string]prevToken, len(prev)+1)
		for id, p := range prev {
			if p.until > nowMs {
				np[id] = p
			}
		}
		prev, prevCopied = np, true
	}
	exists := func(id string) bool {
		if x, ok := over[id]; ok {
			return x.state != stateDeleted
		}
		_, ok := r.base[id]
		return ok
	}
	for _, c := range changes {
		had := exists(c.ID)
		_, hadPrev := prev[c.ID]
		if c.Deleted {
			if had {
				r.n--
			}
			if _, inBase := r.base[c.ID]; inBase {
				over[c.ID] = rec{state: stateDeleted}
			} else {
				delete(over, c.ID)
			}
			if hadPrev {
				copyPrev()
				delete(prev, c.ID)
			}
			continue
		}
		if !had {
			r.n++
		}
		over[c.ID] = b.rec(c)
		switch {
		case c.PrevUntil > now.UnixMilli():
			copyPrev()
			prev[c.ID] = prevToken{token: c.PrevToken, until: c.PrevUntil}
		case hadPrev:
			copyPrev()
			delete(prev, c.ID)
		}
	}
	if len(over) > mergeThreshold(len(r.base)) {
		base := maps.Clone(r.base)
		if base == nil {
			base = map[string]rec{}
		}
		for id, x := range over {
			if x.state == stateDeleted {
				delete(base, id)
			} else {
				base[id] = x
			}
		}
		r.base, over = base, nil
	}
	if len(over) == 0 {
		over = nil
	}
	r.over, r.prev, r.labels = over, prev, b.labels
	b.cur = r
	return r
}
