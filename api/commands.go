package api

import (
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Command states (docs/commands.md has the diagram).
const (
	CmdQueued    = "queued"    // on disk, waiting for the frontend that holds the device
	CmdSent      = "sent"      // handed to that frontend, which writes it to the device
	CmdDelivered = "delivered" // the device said it received it
	CmdSucceeded = "succeeded" // the device executed it: final
	CmdFailed    = "failed"    // the device did not, or it failed: final
	CmdExpired   = "expired"   // its time to live ended before the device received it: final
	CmdCancelled = "cancelled" // an operator cancelled it while queued: final
)

// openStates are the states of a command still in flight (the partial
// index commands_open).
const openStates = `('queued', 'sent', 'delivered')`

// cmdFinal reports whether state ends a command.
func cmdFinal(state string) bool {
	return state == CmdSucceeded || state == CmdFailed || state == CmdExpired || state == CmdCancelled
}

// CommandConfig bounds commands. Part of [Config].
type CommandConfig struct {
	// QueueLimit is the most commands of one device that may wait (queued
	// or sent, not yet received by the device); past it a new command is
	// refused with 429, never by dropping an older one.
	QueueLimit int
	// DefaultTTL is the time to live of a command that names none; MaxTTL
	// bounds the one it names.
	DefaultTTL, MaxTTL time.Duration
	// MaxWait bounds ?wait= on a command request.
	MaxWait time.Duration
	// Resend is the first delay before a command sent to a frontend but
	// not reported received is sent again (it doubles per attempt, up to
	// 16×). A device that connected again since is sent it at once.
	Resend time.Duration
	// Poll is how often waiting requests look at the database for changes
	// this replica did not make or hear of (the clock: resends and expiry;
	// other replicas' changes while their notifications do not reach it).
	// Within a replica, and from other replicas on PostgreSQL, changes
	// wake waiters at once.
	Poll time.Duration
	// ReportGrace is how long after its expiry a command that was sent
	// stays sent, waiting for the device's report, before it is marked
	// expired (a report that comes later still counts: the device's word
	// is the truth).
	ReportGrace time.Duration
	// Retention is how long a finished command (succeeded, failed,
	// expired, cancelled) is kept after it finished; older ones are
	// deleted, so that the table does not grow forever. 0 keeps them.
	Retention time.Duration
}

// DefaultCommandConfig: 32 waiting commands per device, 5 minutes to live
// unless told (at most 7 days), waits of up to 60 s, a first resend after
// 5 s, a 1 s poll, finished commands kept 30 days.
func DefaultCommandConfig() CommandConfig {
	return CommandConfig{QueueLimit: 32, DefaultTTL: 5 * time.Minute, MaxTTL: 7 * 24 * time.Hour,
		MaxWait: 60 * time.Second, Resend: 5 * time.Second, Poll: time.Second, ReportGrace: 30 * time.Second,
		Retention: 30 * 24 * time.Hour}
}

// RegisterFlags defines the command flags in fs.
func (c *CommandConfig) RegisterFlags(fs *flag.FlagSet) {
	fs.IntVar(&c.QueueLimit, "command-queue-limit", c.QueueLimit,
		"most commands of one device waiting for it (`number`); past it new ones get 429")
	fs.DurationVar(&c.DefaultTTL, "command-default-ttl", c.DefaultTTL, "time to live (`duration`) of a command that names none")
	fs.DurationVar(&c.MaxTTL, "command-max-ttl", c.MaxTTL, "longest time to live (`duration`) a command may name")
	fs.DurationVar(&c.MaxWait, "command-max-wait", c.MaxWait, "longest ?wait= (`duration`) of a command request")
	fs.DurationVar(&c.Resend, "command-resend", c.Resend,
		"first delay (`duration`) before a command not reported received is sent again (doubles per attempt, up to 16x)")
	fs.DurationVar(&c.Poll, "command-poll", c.Poll,
		"how often (`duration`) waiting command requests and frontend polls read the database for what the clock changed (and, on PostgreSQL, other replicas' changes while this one does not hear them)")
	fs.DurationVar(&c.ReportGrace, "command-report-grace", c.ReportGrace,
		"how long (`duration`) after its expiry a sent command waits for the device's report before it is marked expired")
	fs.DurationVar(&c.Retention, "command-retention", c.Retention,
		"how long (`duration`) a finished command is kept after it finished; older ones are deleted (0: keep them all; at least 1h)")
}

// validate reports the problems of c.
func (c CommandConfig) validate() []error {
	var errs []error
	if c.QueueLimit < 1 {
		errs = append(errs, fmt.Errorf("command-queue-limit: %d, want > 0", c.QueueLimit))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"command-default-ttl", c.DefaultTTL}, {"command-max-ttl", c.MaxTTL}, {"command-max-wait", c.MaxWait},
		{"command-resend", c.Resend}, {"command-poll", c.Poll}, {"command-report-grace", c.ReportGrace}} {
		if d.v <= 0 {
			errs = append(errs, fmt.Errorf("%s: %v, want > 0", d.name, d.v))
		}
	}
	if c.Retention != 0 && c.Retention < minRetention {
		errs = append(errs, fmt.Errorf("command-retention: %v, want 0 (keep) or at least %v", c.Retention, minRetention))
	}
	if c.DefaultTTL > c.MaxTTL {
		errs = append(errs, fmt.Errorf("command-default-ttl %v over command-max-ttl %v", c.DefaultTTL, c.MaxTTL))
	}
	return errs
}

// Command is a command as the API shows it.
type Command struct {
	ID             string            `json:"id"`
	DeviceID       string            `json:"device_id"`
	Seq            int64             `json:"seq"`
	Name           string            `json:"name"`
	Params         map[string]string `json:"params"`
	IdempotencyKey string            `json:"idempotency_key,omitempty"`
	State          string            `json:"state"`
	CreatedAt      time.Time         `json:"created_at"`
	CreatedBy      string            `json:"created_by"`
	ExpiresAt      time.Time         `json:"expires_at"`
	// SentAt is the last delivery attempt; SentTo the frontend that took
	// it ("" when it could not write it); Attempts counts them.
	SentAt      *time.Time `json:"sent_at"`
	SentTo      string     `json:"sent_to"`
	Attempts    int        `json:"attempts"`
	DeliveredAt *time.Time `json:"delivered_at"`
	// CompletedAt is when the command reached its final state.
	CompletedAt *time.Time `json:"completed_at"`
	CancelledBy string     `json:"cancelled_by,omitempty"`
	// Message and Payload are what the device reported with its result.
	Message string `json:"message"`
	Payload string `json:"payload"`
	// Progress is the last progress the device reported of a command that
	// takes long (firmware_update), nil when it reported none.
	Progress *CommandProgress `json:"progress,omitempty"`
}

// CommandProgress is a device's last progress report on a command (wire
// format 1.2): a stage (downloading, verifying, installing) and, while
// downloading, the bytes received so far.
type CommandProgress struct {
	Stage string    `json:"stage"`
	Bytes int64     `json:"bytes"`
	At    time.Time `json:"at"`
}

// Progress stages a device reports (the api's report outcomes of the same
// names), in their order.
const (
	ProgressDownloading = "downloading"
	ProgressVerifying   = "verifying"
	ProgressInstalling  = "installing"
)

// CommandInput is the body of POST /v1/devices/{id}/commands.
type CommandInput struct {
	Name   string            `json:"name"`
	Params map[string]string `json:"params"`
	// TTL is a Go duration ("30s", "5m"); empty: -command-default-ttl.
	TTL string `json:"ttl"`
}

var commandNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// Bounds of a command's parameters: a command must fit a device frame
// over GPRS with room to spare.
const (
	maxCommandParams     = 32
	maxCommandParamValue = 1024
	maxCommandParamBytes = 8 << 10
	maxIdempotencyKeyLen = 128
)

func (in *CommandInput) validate(cfg CommandConfig) (time.Duration, error) {
	if !commandNameRE.MatchString(in.Name) {
		return 0, errInvalid("name", "name: %q, want 1 to 64 of A-Z a-z 0-9 _ . - (not starting with _ . -)", in.Name)
	}
	if len(in.Params) > maxCommandParams {
		return 0, errInvalid("params", "params: %d entries, at most %d", len(in.Params), maxCommandParams)
	}
	total := 0
	for k, v := range in.Params {
		if !labelKeyRE.MatchString(k) {
			return 0, errInvalid("params", "params: key %q, want 1 to 63 of A-Z a-z 0-9 _ . -", k)
		}
		if len(v) > maxCommandParamValue || hasControlChar(v) {
			return 0, errInvalid("params", "params: value of %q: at most %d bytes, no control characters", k, maxCommandParamValue)
		}
		total += len(k) + len(v)
	}
	if total > maxCommandParamBytes {
		return 0, errInvalid("params", "params: %d bytes in all, at most %d", total, maxCommandParamBytes)
	}
	ttl := cfg.DefaultTTL
	if in.TTL != "" {
		d, err := time.ParseDuration(in.TTL)
		if err != nil || d < time.Second || d > cfg.MaxTTL {
			return 0, errInvalid("ttl", "ttl: %q, want a duration from 1s to %v", in.TTL, cfg.MaxTTL)
		}
		ttl = d
	}
	return ttl, nil
}

func hasControlChar(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return true
		}
	}
	return false
}

// errQueueFull is the 429 of a device whose command queue is full.
func errQueueFull(device string, limit int) *Error {
	return &Error{Status: http.StatusTooManyRequests, Code: "queue_full",
		Message: fmt.Sprintf("device %q has %d commands waiting, the limit: wait for it to take them, or cancel some", device, limit),
		Details: map[string]int{"limit": limit}, RetryAfter: 5 * time.Second}
}

// parseWait reads ?wait=, bounded by max; 0 when absent.
func parseWait(r *http.Request, max time.Duration) (time.Duration, error) {
	ws := r.URL.Query().Get("wait")
	if ws == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(ws)
	if err != nil || d < 0 {
		return 0, errBadRequest("wait: %q, want a duration such as 5s", ws)
	}
	return min(d, max), nil
}

// createCommand answers POST /v1/devices/{id}/commands[?wait=5s]: 201 once
// the command is committed; with wait, after it reaches a final state or
// the wait ends (the answer says the state reached). An Idempotency-Key
// header makes a retry answer the command the first request created (200)
// instead of creating another.
func (s *Server) createCommand(w http.ResponseWriter, r *http.Request, p *principal) error {
	cfg := s.cfg.Commands
	wait, err := parseWait(r, cfg.MaxWait)
	if err != nil {
		return err
	}
	idem := strings.TrimSpace(r.Header.Get("Idempotency-Key"))
	if len(idem) > maxIdempotencyKeyLen || hasControlChar(idem) {
		return errInvalid("Idempotency-Key", "Idempotency-Key: at most %d bytes, no control characters", maxIdempotencyKeyLen)
	}
	var in CommandInput
	if err := decodeJSON(r, &in); err != nil {
		return err
	}
	ttl, err := in.validate(cfg)
	if err != nil {
		return err
	}
	if in.Params == nil {
		in.Params = map[string]string{}
	}
	params, _ := json.Marshal(in.Params)
	ctx := r.Context()
	devID := r.PathValue("id")
	var cmd Command
	var frontend string // that holds the device now, woken after the commit
	status := http.StatusCreated
	err = s.db.writeGroup(ctx, devID, func(t *tx) error {
		status = http.StatusCreated // this function may run again (db_group.go): start afresh
		// On PostgreSQL: one round trip (commands_create_pg.go).
		if t.s.driver == DriverPostgres {
			cmd = Command{ID: newID("cmd_"), DeviceID: devID, Name: in.Name, Params: in.Params, IdempotencyKey: idem,
				State: CmdQueued, CreatedAt: msTime(t.ms()), CreatedBy: p.actor(), ExpiresAt: msTime(t.now.Add(ttl).UnixMilli())}
			var err error
			if frontend, status, err = t.createPostgres(p, &cmd, string(params), requestID(r), cfg.QueueLimit,
				s.handoff.polling(t.now)); err != nil || status != http.StatusCreated {
				return err
			}
			return t.notifyCommands(createdEvents(cmd)...)
		}
		// One statement reads all the write needs: the device (its fleet
		// for the caller's scope, its state), its commands waiting, the
		// next seq, the frontend holding it; then one inserts. The
		// statements of a command are the api's hottest (docs/performance.md,
		// "Commands round trip"): each one less is CPU the round trip keeps.
		var fleet, state string
		var waiting int
		var seq int64
		if err := t.lockDeviceCommands(devID); err != nil {
			return err
		}
		err := t.queryRowW(createCommandRead, devID).Scan(&fleet, &state, &waiting, &seq, &frontend)
		if errors.Is(err, sql.ErrNoRows) || (err == nil && !p.sees(fleet)) {
			return errNotFound("device", devID)
		}
		if err != nil {
			return fmt.Errorf("read device %s: %w", devID, err)
		}
		if state == StateDecommissioned {
			return errInvalid("device", "device %q is decommissioned: it takes no commands", devID)
		}
		if idem != "" {
			old, err := t.idempotentReplay(devID, idem, in.Name, in.Params)
			switch {
			case err == nil:
				cmd, status = old, http.StatusOK
				return nil
			case !errors.Is(err, sql.ErrNoRows):
				return err
			}
		}
		if waiting >= cfg.QueueLimit {
			return errQueueFull(devID, cfg.QueueLimit) // counted once it is the answer, below
		}
		cmd = Command{ID: newID("cmd_"), DeviceID: devID, Seq: seq, Name: in.Name, Params: in.Params, IdempotencyKey: idem,
			State: CmdQueued, CreatedAt: msTime(t.ms()), CreatedBy: p.actor(), ExpiresAt: msTime(t.now.Add(ttl).UnixMilli())}
		var sentAt int64
		if waiting == 0 && frontend != "" && s.handoff.takes(frontend, t.now) { // commands_handoff.go
			cmd.sentBy(frontend)
			sentAt = cmd.SentAt.UnixMilli()
		}
		_, err = t.execW(createCommandInsert, cmd.ID, devID, seq, in.Name, string(params), nullString(idem), cmd.State, t.ms(),
			p.actor(), p.KeyID, requestID(r), cmd.ExpiresAt.UnixMilli(), nullInt(sentAt), cmd.SentTo, cmd.Attempts)
		if err != nil {
			return fmt.Errorf("insert command: %w", err)
		}
		return t.notifyCommands(createdEvents(cmd)...)
	})
	if err != nil {
		if e, ok := errors.AsType[*Error](err); ok && e.Code == "queue_full" {
			s.metrics.commands.WithLabelValues("refused_queue_full").Inc()
		}
		return err
	}
	var start *watched
	if wait > 0 && status == http.StatusCreated {
		// Watch before the frontend is woken: the answer then comes from
		// the notification of the change, without a first read of what
		// this request just wrote.
		wt, release := s.notify.watchCommand(cmd.ID)
		start = &watched{c: cmd, w: wt, release: release}
	}
	if status == http.StatusCreated {
		s.metrics.commands.WithLabelValues("created").Inc()
		s.events.publish(createdEvents(cmd)...)
		switch {
		case cmd.State == CmdSent:
			s.metrics.commands.WithLabelValues("sent").Inc()
			s.metrics.handoffs.WithLabelValues("handed").Inc()
			s.handoff.put(cmd.SentTo, cmd.dispatched(), time.Now())
			s.notify.fire(s.notify.fes, cmd.SentTo)
		case frontend != "":
			s.notify.addWork(frontend, devID)
		}
	}
	if wait > 0 && !cmdFinal(cmd.State) {
		if cmd, err = s.waitCommand(ctx, p, devID, cmd.ID, wait, start); err != nil {
			return err
		}
	}
	w.Header().Set("Location", "/v1/devices/"+devID+"/commands/"+cmd.ID)
	writeJSON(w, status, cmd)
	return nil
}

// The statements of createCommand (prepared once on SQLite).
const (
	createCommandRead = `SELECT COALESCE(d.fleet, ''), d.state,
 (SELECT COUNT(*) FROM commands c WHERE c.device_id = d.id AND c.state IN ('queued', 'sent')),
 (SELECT COALESCE(MAX(c.seq), 0) + 1 FROM commands c WHERE c.device_id = d.id),
 COALESCE((SELECT p.frontend FROM device_presence p WHERE p.device_id = d.id AND p.connected = 1), '')
FROM devices d WHERE d.id = $1`
	commandByIdempotencyKey = `SELECT ` + commandCols + ` FROM commands WHERE device_id = $1 AND idempotency_key = $2`
	createCommandInsert     = `INSERT INTO commands (id, device_id, seq, name, params, idempotency_key, state, created_at,
 created_by, key_id, request_id, expires_at, updated_at, sent_at, sent_to, attempts)
 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $8, $13, $14, $15)`
)

// lockDeviceCommand locks a device's row (PostgreSQL) for a
// transaction that creates commands of it.
const lockDeviceCommand = `SELECT 1 FROM devices WHERE id = $1 FOR NO KEY UPDATE`

// lockDeviceCommands makes the transactions that create commands of
// devID take turns (PostgreSQL; on SQLite the transaction holds the
// database's write lock already): the next seq, the waiting count and the
// idempotency key it then reads — in a statement of its own, so that
// PostgreSQL reads them as of after the lock — stay true until it commits,
// whatever other group transactions run beside it. NO KEY UPDATE: the
// foreign keys of presence and command rows, which take KEY SHARE on the
// device, are not held up. A device that does not exist locks nothing; the
// read that follows says so.
func (t *tx) lockDeviceCommands(devID string) error {
	if t.s.driver != DriverPostgres {
		return nil
	}
	var one int
	err := t.queryRowW(lockDeviceCommand, devID).Scan(&one)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("lock device %s: %w", devID, err)
	}
	return nil
}

func sameParams(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}

// getCommand answers GET /v1/devices/{id}/commands/{cmd}[?wait=5s].
func (s *Server) getCommand(w http.ResponseWriter, r *http.Request, p *principal) error {
	wait, err := parseWait(r, s.cfg.Commands.MaxWait)
	if err != nil {
		return err
	}
	c, err := s.waitCommand(r.Context(), p, r.PathValue("id"), r.PathValue("cmd"), wait, nil)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, c)
	return nil
}

var commandStates = []string{CmdQueued, CmdSent, CmdDelivered, CmdSucceeded, CmdFailed, CmdExpired, CmdCancelled}

// listCommands answers GET /v1/devices/{id}/commands: newest first,
// filtered by ?state=a,b and ?name=, paged by ?limit= and ?cursor=.
func (s *Server) listCommands(w http.ResponseWriter, r *http.Request, p *principal) error {
	pg, err := parsePage(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	devID := r.PathValue("id")
	if _, err := loadDevice(ctx, s.db.rdb, p, devID); err != nil {
		return err
	}
	var q queryArgs
	q.add("device_id = ?", devID)
	if st := r.URL.Query().Get("state"); st != "" {
		states := strings.Split(st, ",")
		for _, x := range states {
			if !slices.Contains(commandStates, x) {
				return errBadRequest("state: %q, want some of %s", x, strings.Join(commandStates, ","))
			}
		}
		q.in("state", states)
	}
	if n := r.URL.Query().Get("name"); n != "" {
		q.add("name = ?", n)
	}
	if pg.cursor != "" {
		seq, err := strconv.ParseInt(pg.cursor, 10, 64)
		if err != nil {
			return errBadRequest("cursor: not one this API returned")
		}
		q.add("seq < ?", seq)
	}
	rows, err := s.db.rdb.QueryContext(ctx, `SELECT `+commandCols+` FROM commands`+q.clause()+
		` ORDER BY seq DESC LIMIT `+strconv.Itoa(pg.limit+1), q.args...)
	if err != nil {
		return fmt.Errorf("list commands: %w", err)
	}
	defer rows.Close()
	var out []Command
	for rows.Next() {
		c, err := scanCommand(rows)
		if err != nil {
			return fmt.Errorf("list commands: %w", err)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("list commands: %w", err)
	}
	writeJSON(w, http.StatusOK, pageOf(out, pg.limit, func(c Command) string { return strconv.FormatInt(c.Seq, 10) }))
	return nil
}

// cancelCommand answers POST /v1/devices/{id}/commands/{cmd}/cancel: a
// queued command becomes cancelled and is never sent. Once sent it may be
// on the device already: 409, with the state.
func (s *Server) cancelCommand(w http.ResponseWriter, r *http.Request, p *principal) error {
	ctx := r.Context()
	devID, id := r.PathValue("id"), r.PathValue("cmd")
	var c Command
	err := s.db.write(ctx, func(t *tx) error {
		var err error
		if c, err = loadCommand(ctx, t, p, devID, id); err != nil {
			return err
		}
		if c.State == CmdCancelled {
			return nil
		}
		if c.State != CmdQueued {
			return &Error{Status: http.StatusConflict, Code: "conflict",
				Message: fmt.Sprintf("command %s is %s: only a queued command can be cancelled (a sent one may be on the device already)", id, c.State),
				Details: map[string]string{"state": c.State}}
		}
		if _, err := t.ExecContext(ctx, `UPDATE commands SET state = $1, completed_at = $2, cancelled_by = $3, updated_at = $2
WHERE id = $4`, CmdCancelled, t.ms(), p.actor(), id); err != nil {
			return fmt.Errorf("cancel command: %w", err)
		}
		now := msTime(t.ms())
		c.State, c.CompletedAt, c.CancelledBy = CmdCancelled, &now, p.actor()
		return t.notifyCommands(CommandEvent{ID: id, DeviceID: devID, State: CmdCancelled, At: now})
	})
	if err != nil {
		return err
	}
	s.metrics.commands.WithLabelValues(CmdCancelled).Inc()
	s.notify.commandsChanged(id)
	if c.CompletedAt != nil {
		s.events.publish(CommandEvent{ID: id, DeviceID: devID, State: CmdCancelled, At: *c.CompletedAt})
	}
	writeJSON(w, http.StatusOK, c)
	return nil
}
