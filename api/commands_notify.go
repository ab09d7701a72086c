package api

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/drover-telemetry/drover/internal/backoff"
)

// Command changes across replicas (PostgreSQL). Each replica wakes its own
// waiters and streams at once when it changes a command; the changes of the
// other replicas reach it through PostgreSQL's LISTEN/NOTIFY: a write
// transaction that changes commands also runs pg_notify with the events
// (notifyCommands), which PostgreSQL delivers to every listening session
// only when, and if, that transaction commits, in commit order — a write
// rolled back (alone, to its savepoint, in a group commit) takes its
// events with it. Every replica holds one connection that listens
// (listenCommands) and hands what other replicas changed to its event
// streams, its waiting requests (?wait) and the long polls of the
// frontends that hold those devices; its own changes reach its streams
// the same way, so that every stream has the database's commit order (a command created on replica B for a
// device whose frontend polls replica A goes out at once, not at A's next
// full scan).
//
// Why not only polling, as the change feed does: a poll of the commands
// table every -command-poll made waits across replicas as slow as the
// poll (1 s against a round trip of tens of ms), and a stream of events
// cannot be rebuilt from rows that only hold each command's last state.
// What NOTIFY costs: one statement per transaction that changes commands
// (a group's writes share it), sent in the same round trip as its COMMIT
// (db_postgres.go), and a dedicated connection per replica, which also
// carries the API-key cache's evictions (keycache.go). While that connection is down (the
// database restarting), the streams of the replica end with an overflow
// event (their clients list what they missed and reconnect) and waits
// fall back to reading the row every -command-poll, as before; behind a
// proxy that pools connections per transaction (PgBouncer's transaction
// mode) LISTEN hears nothing: give the api a session-pooled or direct URL.
// SQLite has one replica: it needs none of this.

// commandChannel is the PostgreSQL notification channel of command events.
const commandChannel = "drover_command_events"

// maxNotifyPayload bounds one notification's payload (PostgreSQL's limit
// is 8,000 bytes); more events take more notifications.
const maxNotifyPayload = 7000

// commandNote is a notification's payload: the events and the replica
// that made them (which ignores its own).
type commandNote struct {
	Replica string         `json:"r"`
	Events  []CommandEvent `json:"e"`
	// Keys and Operators: API keys, and operators whose keys, that the
	// transaction changed, to evict from every replica's key cache
	// (keycache.go). A note of its own, on the same channel: the
	// connection that hears command events hears them, with its
	// reconnect logic, and the cache is off while it does not listen.
	Keys      []string `json:"k,omitempty"`
	Operators []string `json:"o,omitempty"`
}

// keyChanged evicts API key id from every replica's key cache when t
// commits.
func (t *tx) keyChanged(id string) { t.evictKeys = append(t.evictKeys, id) }

// operatorChanged evicts the API keys of operator id from every replica's
// key cache when t commits.
func (t *tx) operatorChanged(id string) { t.evictOps = append(t.evictOps, id) }

// notifyCommands tells the other replicas of evs, at the commit of t (on
// PostgreSQL; nothing on SQLite). Each event is encoded once, now; the
// transaction sends them all with its COMMIT (notePayloads, commitPG), in as
// few notifications as fit: one statement per transaction, however many
// writes of a group changed commands. A write rolled back to its savepoint
// drops its events with it (db_group.go).
func (t *tx) notifyCommands(evs ...CommandEvent) error {
	if t.s.driver != DriverPostgres {
		return nil
	}
	for _, ev := range evs {
		e, err := json.Marshal(ev)
		if err != nil {
			return fmt.Errorf("notify command events: %w", err)
		}
		t.notes = append(t.notes, e)
	}
	return nil
}

// notePayloads are t's pending notifications, for commitPG to send with
// pg_notify just before COMMIT, in the same round trip: a note of the API
// keys and operators t changed, if any, then t's command events packed
// into payloads of at most maxNotifyPayload bytes (notified in their
// order: PostgreSQL queues them as pg_notify runs and delivers them at
// commit).
func (t *tx) notePayloads() ([]string, error) {
	var payloads []string
	if len(t.evictKeys)+len(t.evictOps) > 0 {
		kn, err := json.Marshal(commandNote{Replica: t.s.replica, Keys: t.evictKeys, Operators: t.evictOps})
		if err != nil {
			return nil, fmt.Errorf("notify key changes: %w", err)
		}
		payloads = append(payloads, string(kn))
	}
	if len(t.notes) > 0 {
		payloads = t.commandPayloads(payloads)
	}
	return payloads, nil
}

// queueNotify queues the pg_notify of payloads in b: one statement.
func queueNotify(b *pgx.Batch, payloads []string) {
	switch len(payloads) {
	case 0:
	case 1:
		b.Queue(`SELECT pg_notify($1, $2)`, commandChannel, payloads[0])
	default:
		b.Queue(`SELECT pg_notify($1, p) FROM unnest($2::text[]) WITH ORDINALITY AS n(p, i) ORDER BY i`, commandChannel, payloads)
	}
}

// commandPayloads appends t's command events to payloads, packed into
// notes of at most maxNotifyPayload bytes, and empties t.notes.
func (t *tx) commandPayloads(payloads []string) []string {
	r, _ := json.Marshal(t.s.replica)
	head := `{"r":` + string(r) + `,"e":[`
	var b strings.Builder
	for _, e := range t.notes {
		if b.Len() > 0 && b.Len()+len(e)+3 > maxNotifyPayload {
			b.WriteString("]}")
			payloads = append(payloads, b.String())
			b.Reset()
		}
		if b.Len() == 0 {
			b.WriteString(head)
		} else {
			b.WriteByte(',')
		}
		b.Write(e)
	}
	b.WriteString("]}")
	payloads = append(payloads, b.String())
	t.notes = t.notes[:0]
	return payloads
}

// listenCommands listens for the command events of the other replicas
// until ctx ends, reconnecting with backoff. ready is closed once it
// listened for the first time (or gave up trying at start).
func (s *Server) listenCommands(ctx context.Context, ready chan<- struct{}) {
	bo := backoff.New(200*time.Millisecond, 10*time.Second, nil)
	first := true
	for ctx.Err() == nil {
		err := s.listenOnce(ctx, func() {
			if first {
				first = false
				close(ready)
			} else {
				// Streams opened while it did not listen missed what the
				// others did meanwhile: they end now, with overflow.
				s.events.overflowDeaf()
				s.log.Info("api: listening again for the command changes of other replicas")
			}
			bo.Reset()
		})
		if ctx.Err() != nil {
			break
		}
		// Whatever was notified while not listening is lost to this
		// replica's streams: they say so (waits poll the rows meanwhile).
		s.events.overflowAll()
		s.notify.allCommandsChanged() // waits read again, and poll until it listens
		s.metrics.notifyLost.Inc()
		if !bo.Active() {
			s.log.Warn("api: not listening for the command changes of other replicas; event streams end, waits poll", "err", err)
		}
		if first {
			first = false
			close(ready) // start serving anyway; waits poll until it listens
		}
		select {
		case <-ctx.Done():
		case <-time.After(bo.Next()):
		}
	}
	if first {
		close(ready)
	}
}

// listenOnce connects, listens and handles notifications until the
// connection fails or ctx ends; listening is called once it listens.
func (s *Server) listenOnce(ctx context.Context, listening func()) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := pgx.Connect(cctx, s.cfg.PostgresURL)
	cancel()
	if err != nil {
		return fmt.Errorf("connect: %w", redactURLError(err))
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	if _, err := conn.Exec(ctx, `LISTEN `+commandChannel); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	// From here this replica's own events come back through the
	// notifications, in commit order with the others' (eventBus.publish).
	s.listening.Store(true)
	defer s.listening.Store(false)
	// The key cache likewise: emptied, and on only while listening (an
	// eviction notified while not listening was heard by no one here).
	s.keys.setOn(true)
	defer s.keys.setOn(false)
	// What other replicas finished while this one was not listening was
	// announced to no one here: every wait reads its row again, now that
	// what commits from here on will be heard.
	s.notify.allCommandsChanged()
	listening()
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return fmt.Errorf("wait for notification: %w", err)
		}
		var note commandNote
		if err := json.Unmarshal([]byte(n.Payload), &note); err != nil {
			s.log.Warn("api: a command notification that is not ours", "err", err)
			continue
		}
		if note.Replica == s.db.replica {
			if len(note.Events) > 0 {
				s.events.publishNow(note.Events...) // woken and counted at its commit already; keys evicted then too
			}
			continue
		}
		s.keys.evict(evictRemote, note.Keys, note.Operators)
		if len(note.Events) > 0 {
			s.remoteCommands(ctx, note.Events)
		}
	}
}

// remoteCommands hands the events of another replica to this one's
// streams, waiting requests and frontend long polls.
func (s *Server) remoteCommands(ctx context.Context, evs []CommandEvent) {
	s.metrics.notifyEvents.Add(float64(len(evs)))
	var devs []any
	seen := map[string]bool{}
	for _, ev := range evs {
		// A new or requeued command, or an outcome that unblocks the
		// device's next one: its frontend may have work. A sent one was
		// handed to a frontend already.
		if ev.State != CmdSent && !seen[ev.DeviceID] {
			seen[ev.DeviceID] = true
			devs = append(devs, ev.DeviceID)
		}
	}
	s.notify.commandsChanged(finalIDs(evs)...)
	s.events.publishNow(evs...)
	for len(devs) > 0 {
		n := min(len(devs), 500)
		if err := s.wakeFrontendsOf(ctx, devs[:n]); err != nil && ctx.Err() == nil {
			s.log.Warn("api: wake frontends for another replica's command changes", "err", err)
		}
		devs = devs[n:]
	}
}

// wakeFrontendsOf wakes the long polls of the frontends that hold devs.
func (s *Server) wakeFrontendsOf(ctx context.Context, devs []any) error {
	rows, err := s.db.rdb.QueryContext(ctx, `SELECT device_id, frontend FROM device_presence WHERE connected = 1 AND device_id IN (`+
		placeholders(1, len(devs))+`)`, devs...)
	if err != nil {
		return err
	}
	defer rows.Close()
	byFE := map[string][]string{}
	for rows.Next() {
		var dev, fe string
		if err := rows.Scan(&dev, &fe); err != nil {
			return err
		}
		byFE[fe] = append(byFE[fe], dev)
	}
	for fe, ds := range byFE {
		s.notify.addWork(fe, ds...)
	}
	return rows.Err()
}
