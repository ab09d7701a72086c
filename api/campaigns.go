package api

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// Firmware campaigns (docs/firmware.md): a firmware image rolled out to the
// devices a selector names at creation, each through a firmware_update
// command (commands.go delivers it; the device downloads, verifies,
// installs and reports). A scheduler tick per -command-poll, per running
// campaign, in one write transaction: it carries the devices' command
// outcomes into their campaign state, applies the abort rule, and offers
// the image to more pending devices within the pacing (per minute) and the
// concurrency (devices in flight: offered, downloading, verifying,
// installing; the last three are the device's progress reports, wire
// format 1.2, or downloading alone for a device that only says it received
// the offer). A device's timeout is its
// command's time to live: a device that does not finish in time ends
// failed ("timed out"). Transactions make the tick safe on several
// replicas: each change is conditional on the state it read.

// Campaign states.
const (
	CampaignRunning   = "running"
	CampaignPaused    = "paused"
	CampaignAborted   = "aborted"
	CampaignCompleted = "completed"
)

// Campaign is a campaign as the API shows it, with its devices counted by
// state.
type Campaign struct {
	ID            string         `json:"id"`
	Firmware      string         `json:"firmware"`
	State         string         `json:"state"`
	PerMinute     int            `json:"per_minute"`
	RampFactor    float64        `json:"ramp_factor"`
	RampEvery     int            `json:"ramp_every"`
	MaxPerMinute  int            `json:"max_per_minute"`
	MaxConcurrent int            `json:"max_concurrent"`
	DeviceTimeout string         `json:"device_timeout"`
	AbortPercent  int            `json:"abort_percent"`
	AbortMin      int            `json:"abort_min"`
	Reason        string         `json:"reason"`
	Devices       map[string]int `json:"devices"`
	CreatedAt     time.Time      `json:"created_at"`
	CreatedBy     string         `json:"created_by"`
}

// CampaignInput is the body of POST /v1/firmware-campaigns.
type CampaignInput struct {
	Firmware string `json:"firmware"`
	// The selector: every device matching all the given fields (devices:
	// any of the list). At least one is required.
	Fleet   string   `json:"fleet"`
	Class   string   `json:"class"`
	Region  string   `json:"region"`
	Devices []string `json:"devices"`
	// Pacing: devices offered per minute, devices in flight (offered,
	// downloading, verifying, installing) at once. With a ramp, the rate
	// is multiplied by RampFactor after every RampEvery devices
	// succeeded, up to MaxPerMinute.
	PerMinute     int     `json:"per_minute"`
	RampFactor    float64 `json:"ramp_factor"`
	RampEvery     int     `json:"ramp_every"`
	MaxPerMinute  int     `json:"max_per_minute"`
	MaxConcurrent int     `json:"max_concurrent"`
	DeviceTimeout string  `json:"device_timeout"`
	// Abort when at least AbortPercent % of at least AbortMin finished
	// devices failed (0: never).
	AbortPercent int `json:"abort_percent"`
	AbortMin     int `json:"abort_min"`
}

const campaignCols = `id, firmware_id, state, per_minute, ramp_pct, ramp_every, max_per_minute, max_concurrent, device_timeout,
 abort_percent, abort_min, reason, created_at, created_by`

func (s *Server) loadCampaign(ctx context.Context, q querier, id string) (Campaign, error) {
	var c Campaign
	var timeout, created int64
	var rampPct int
	err := q.QueryRowContext(ctx, `SELECT `+campaignCols+` FROM campaigns WHERE id = $1`, id).Scan(&c.ID, &c.Firmware, &c.State,
		&c.PerMinute, &rampPct, &c.RampEvery, &c.MaxPerMinute, &c.MaxConcurrent, &timeout, &c.AbortPercent, &c.AbortMin, &c.Reason,
		&created, &c.CreatedBy)
	c.RampFactor = float64(rampPct) / 100
	if errors.Is(err, sql.ErrNoRows) {
		return c, errNotFound("campaign", id)
	}
	if err != nil {
		return c, fmt.Errorf("read campaign %s: %w", id, err)
	}
	c.DeviceTimeout, c.CreatedAt = time.Duration(timeout*int64(time.Millisecond)).String(), msTime(created)
	c.Devices = map[string]int{}
	rows, err := q.QueryContext(ctx, `SELECT state, COUNT(*) FROM campaign_devices WHERE campaign_id = $1 GROUP BY state`, id)
	if err != nil {
		return c, fmt.Errorf("count campaign devices: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var st string
		var n int
		if err := rows.Scan(&st, &n); err != nil {
			return c, err
		}
		c.Devices[st] = n
	}
	return c, rows.Err()
}

// createCampaign answers POST /v1/firmware-campaigns.
func (s *Server) createCampaign(w http.ResponseWriter, r *http.Request, p *principal) error {
	in := CampaignInput{PerMinute: 60, MaxConcurrent: 100, DeviceTimeout: "1h"}
	if err := decodeJSON(r, &in); err != nil {
		return err
	}
	timeout, err := time.ParseDuration(in.DeviceTimeout)
	switch {
	case err != nil || timeout < time.Minute || timeout > s.cfg.Commands.MaxTTL:
		return errInvalid("device_timeout", "device_timeout: %q, want 1m to %v", in.DeviceTimeout, s.cfg.Commands.MaxTTL)
	case in.PerMinute < 1 || in.PerMinute > 100_000:
		return errInvalid("per_minute", "per_minute: %d, want 1 to 100000", in.PerMinute)
	case in.RampEvery < 0 || (in.RampEvery > 0 && (in.RampFactor < 1 || in.RampFactor > 100)):
		return errInvalid("ramp_factor", "a ramp needs ramp_every > 0 and ramp_factor from 1 to 100")
	case in.MaxPerMinute != 0 && in.MaxPerMinute < in.PerMinute:
		return errInvalid("max_per_minute", "max_per_minute %d under per_minute %d", in.MaxPerMinute, in.PerMinute)
	case in.MaxConcurrent < 1:
		return errInvalid("max_concurrent", "max_concurrent: %d, want > 0", in.MaxConcurrent)
	case in.AbortPercent < 0 || in.AbortPercent > 100 || in.AbortMin < 0:
		return errInvalid("abort_percent", "abort_percent 0 to 100 and abort_min >= 0")
	case in.Fleet == "" && in.Class == "" && in.Region == "" && len(in.Devices) == 0:
		return errInvalid("selector", "name the devices: fleet, class, region or devices")
	}
	ctx := r.Context()
	var q queryArgs
	if in.Fleet != "" {
		q.add("fleet = ?", in.Fleet)
	}
	if in.Class != "" {
		q.add("class = ?", in.Class)
	}
	if in.Region != "" {
		q.add("region = ?", in.Region)
	}
	if len(in.Devices) > 0 {
		q.in("id", in.Devices)
	}
	q.add("state = ?", StateActive)
	id := newID("camp_")
	var c Campaign
	err = s.db.write(ctx, func(t *tx) error {
		if _, err := loadFirmwareTx(ctx, t, in.Firmware); err != nil {
			return err
		}
		rampPct := 100
		if in.RampEvery > 0 {
			rampPct = int(in.RampFactor*100 + 0.5)
		}
		if in.MaxPerMinute == 0 {
			in.MaxPerMinute = 100_000
		}
		if _, err := t.ExecContext(ctx, `INSERT INTO campaigns (`+campaignCols+`, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,
 $10, $11, '', $12, $13, $12)`,
			id, in.Firmware, CampaignRunning, in.PerMinute, rampPct, in.RampEvery, in.MaxPerMinute, in.MaxConcurrent, timeout.Milliseconds(),
			in.AbortPercent, in.AbortMin, t.ms(), p.actor()); err != nil {
			return fmt.Errorf("insert campaign: %w", err)
		}
		n := q.next()
		args := append(append([]any{}, q.args...), id, t.ms())
		res, err := t.ExecContext(ctx, `INSERT INTO campaign_devices (campaign_id, device_id, state, updated_at)
 SELECT $`+strconv.Itoa(n)+`, id, 'pending', CAST($`+strconv.Itoa(n+1)+` AS BIGINT) FROM devices`+q.clause(), args...)
		if err != nil {
			return fmt.Errorf("select campaign devices: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return errInvalid("selector", "no active device matches the selector")
		}
		if c, err = s.loadCampaign(ctx, t, id); err != nil {
			return err
		}
		return t.audit(actorOf(r, p), change{action: "campaign.create", objType: "campaign", objID: id, after: c})
	})
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/v1/firmware-campaigns/"+id)
	writeJSON(w, http.StatusCreated, c)
	return nil
}

func loadFirmwareTx(ctx context.Context, q querier, id string) (Firmware, error) {
	fw, err := scanFirmware(q.QueryRowContext(ctx, `SELECT `+firmwareCols+` FROM firmware WHERE id = $1`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return fw, errInvalid("firmware", "firmware %q not found", id)
	}
	if err != nil {
		return fw, fmt.Errorf("read firmware: %w", err)
	}
	return fw, nil
}

// getCampaign answers GET /v1/firmware-campaigns/{id}.
func (s *Server) getCampaign(w http.ResponseWriter, r *http.Request, _ *principal) error {
	c, err := s.loadCampaign(r.Context(), s.db.rdb, r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, c)
	return nil
}

// Campaign device states, in their order: pending (not offered yet),
// offered (its firmware_update command is out), downloading (the device
// has it; Bytes received so far when it reports them), verifying,
// installing, then succeeded, failed (Reason), or skipped (the campaign
// was aborted before it was offered).
const (
	CampDevPending     = "pending"
	CampDevOffered     = "offered"
	CampDevDownloading = "downloading"
	CampDevVerifying   = "verifying"
	CampDevInstalling  = "installing"
	CampDevSucceeded   = "succeeded"
	CampDevFailed      = "failed"
	CampDevSkipped     = "skipped"
)

// inFlightStates are the campaign device states that count against
// max_concurrent (and keep a campaign from completing).
const inFlightStates = `('offered', 'downloading', 'verifying', 'installing')`

// CampaignDevice is one device of a campaign.
type CampaignDevice struct {
	DeviceID  string     `json:"device_id"`
	State     string     `json:"state"`
	Command   string     `json:"command"`
	Reason    string     `json:"reason"`
	OfferedAt *time.Time `json:"offered_at"`
	// Bytes is how much of the image the device said it received (its
	// downloading reports; 0 from a device that sends none).
	Bytes int64 `json:"bytes"`
	// UpdatedAt is when the device's campaign state last changed.
	UpdatedAt time.Time `json:"updated_at"`
}

// campaignDevices answers GET /v1/firmware-campaigns/{id}/devices[?state=]:
// the devices of the caller's fleets only.
func (s *Server) campaignDevices(w http.ResponseWriter, r *http.Request, p *principal) error {
	ctx := r.Context()
	id := r.PathValue("id")
	if _, err := s.loadCampaign(ctx, s.db.rdb, id); err != nil {
		return err
	}
	pg, err := parsePage(r)
	if err != nil {
		return err
	}
	var q queryArgs
	q.add("cd.campaign_id = ?", id)
	if st := r.URL.Query().Get("state"); st != "" {
		q.add("cd.state = ?", st)
	}
	if pg.cursor != "" {
		q.add("cd.device_id > ?", pg.cursor)
	}
	if f := p.scopeFleets(); f != nil {
		q.in("d.fleet", f)
	}
	rows, err := s.db.rdb.QueryContext(ctx, `SELECT cd.device_id, cd.state, COALESCE(cd.command_id, ''), cd.reason, cd.offered_at,
 cd.bytes, cd.updated_at FROM campaign_devices cd JOIN devices d ON d.id = cd.device_id`+q.clause()+` ORDER BY cd.device_id LIMIT `+strconv.Itoa(pg.limit+1), q.args...)
	if err != nil {
		return fmt.Errorf("campaign devices: %w", err)
	}
	defer rows.Close()
	var out []CampaignDevice
	for rows.Next() {
		var d CampaignDevice
		var off sql.NullInt64
		var updated int64
		if err := rows.Scan(&d.DeviceID, &d.State, &d.Command, &d.Reason, &off, &d.Bytes, &updated); err != nil {
			return fmt.Errorf("campaign devices: %w", err)
		}
		d.OfferedAt, d.UpdatedAt = optTime(off), msTime(updated)
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, pageOf(out, pg.limit, func(d CampaignDevice) string { return d.DeviceID }))
	return nil
}

// campaignAction answers POST /v1/firmware-campaigns/{id}/{action}: pause
// (nothing more is offered; what is out goes on), resume, abort (final:
// nothing more is offered, queued offers are cancelled, the pending
// devices are skipped).
func (s *Server) campaignAction(w http.ResponseWriter, r *http.Request, p *principal) error {
	ctx := r.Context()
	id, action := r.PathValue("id"), r.PathValue("action")
	var from []string
	var to string
	switch action {
	case "pause":
		from, to = []string{CampaignRunning}, CampaignPaused
	case "resume":
		from, to = []string{CampaignPaused}, CampaignRunning
	case "abort":
		from, to = []string{CampaignRunning, CampaignPaused}, CampaignAborted
	default:
		return errNotFound("action", action)
	}
	var c Campaign
	err := s.db.write(ctx, func(t *tx) error {
		var err error
		if c, err = s.loadCampaign(ctx, t, id); err != nil {
			return err
		}
		if c.State == to {
			return nil
		}
		if c.State != from[0] && (len(from) < 2 || c.State != from[1]) {
			return errConflict("campaign %s is %s: cannot %s", id, c.State, action)
		}
		if to == CampaignAborted {
			if err := s.abortCampaign(t, id, "aborted by "+p.actor()); err != nil {
				return err
			}
		} else if _, err := t.ExecContext(ctx, `UPDATE campaigns SET state = $1, updated_at = $2 WHERE id = $3`, to, t.ms(), id); err != nil {
			return fmt.Errorf("campaign %s: %w", action, err)
		}
		if c, err = s.loadCampaign(ctx, t, id); err != nil {
			return err
		}
		return t.audit(actorOf(r, p), change{action: "campaign." + action, objType: "campaign", objID: id, after: c})
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, c)
	return nil
}

// abortCampaign ends a campaign: queued offers cancelled, pending devices
// skipped; offers already sent go on (they may be installing).
func (s *Server) abortCampaign(t *tx, id, reason string) error {
	ctx := t.ctx
	if _, err := t.ExecContext(ctx, `UPDATE commands SET state = $1, completed_at = $2, cancelled_by = 'campaign', updated_at = $2
WHERE state = 'queued' AND id IN (SELECT command_id FROM campaign_devices WHERE campaign_id = $3 AND state = 'offered')`,
		CmdCancelled, t.ms(), id); err != nil {
		return fmt.Errorf("abort campaign: %w", err)
	}
	if _, err := t.ExecContext(ctx, `UPDATE campaign_devices SET state = 'skipped', updated_at = $1 WHERE campaign_id = $2 AND state = 'pending'`,
		t.ms(), id); err != nil {
		return fmt.Errorf("abort campaign: %w", err)
	}
	if _, err := t.ExecContext(ctx, `UPDATE campaigns SET state = $1, reason = $2, updated_at = $3 WHERE id = $4`,
		CampaignAborted, reason, t.ms(), id); err != nil {
		return fmt.Errorf("abort campaign: %w", err)
	}
	return nil
}

// runCampaigns ticks the running and paused campaigns until ctx ends.
func (s *Server) runCampaigns(ctx context.Context) {
	t := time.NewTicker(s.cfg.Commands.Poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rows, err := s.db.rdb.QueryContext(ctx, `SELECT id FROM campaigns WHERE state IN ($1, $2)`, CampaignRunning, CampaignPaused)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Error("api: campaigns: list", "err", err)
			}
			continue
		}
		var ids []string
		for rows.Next() {
			var id string
			if rows.Scan(&id) == nil {
				ids = append(ids, id)
			}
		}
		rows.Close()
		for _, id := range ids {
			if err := s.tickCampaign(ctx, id, time.Now()); err != nil && ctx.Err() == nil {
				s.log.Error("api: campaign tick failed", "campaign", id, "err", err)
			}
		}
		s.gaugeCampaigns(ctx)
	}
}

// campaignOutcome maps an offer's command state, and the progress its
// device last reported, to the device's campaign state and reason (""
// state: no change). A device that reports no progress is downloading
// from its received report to its result.
func campaignOutcome(cmdState, progress, msg string) (string, string) {
	switch cmdState {
	case CmdDelivered:
		switch progress {
		case ProgressVerifying, ProgressInstalling:
			return progress, ""
		}
		return CampDevDownloading, ""
	case CmdSucceeded:
		return CampDevSucceeded, ""
	case CmdFailed:
		return CampDevFailed, msg
	case CmdExpired:
		return CampDevFailed, "timed out"
	case CmdCancelled:
		return CampDevFailed, "cancelled"
	}
	return "", ""
}

// tickCampaign advances one campaign at now.
func (s *Server) tickCampaign(ctx context.Context, id string, now time.Time) error {
	var offered []CommandEvent
	err := s.db.write(ctx, func(t *tx) error {
		offered = offered[:0]
		c, err := s.loadCampaign(ctx, t, id)
		if err != nil || (c.State != CampaignRunning && c.State != CampaignPaused) {
			return err
		}
		// 1. Outcomes of the offers out, and of the devices that run the
		// target version already: a device that reconnects naming it has
		// installed it, whatever became of the offer's report (a pending
		// one is not offered at all).
		rows, err := t.QueryContext(ctx, `SELECT cd.device_id, cd.state, cd.bytes, COALESCE(c.state, ''), COALESCE(c.progress, ''),
 COALESCE(c.progress_bytes, 0), COALESCE(c.message, ''), COALESCE(p.firmware, '') = f.version
FROM campaign_devices cd JOIN campaigns k ON k.id = cd.campaign_id JOIN firmware f ON f.id = k.firmware_id
 LEFT JOIN commands c ON c.id = cd.command_id LEFT JOIN device_presence p ON p.device_id = cd.device_id
WHERE cd.campaign_id = $1 AND (cd.state IN `+inFlightStates+` OR (cd.state = 'pending' AND p.firmware = f.version))`, id)
		if err != nil {
			return fmt.Errorf("campaign outcomes: %w", err)
		}
		type upd struct {
			dev, state, reason string
			bytes              int64
		}
		var ups []upd
		for rows.Next() {
			var dev, cur, cmdState, progress, msg string
			var curBytes, bytes int64
			var running bool
			if err := rows.Scan(&dev, &cur, &curBytes, &cmdState, &progress, &bytes, &msg, &running); err != nil {
				rows.Close()
				return err
			}
			st, reason := campaignOutcome(cmdState, progress, msg)
			if running {
				st, reason = CampDevSucceeded, ""
			}
			if st == "" {
				st = cur
			}
			if st != cur || bytes != curBytes {
				ups = append(ups, upd{dev, st, reason, bytes})
			}
		}
		rows.Close()
		for _, u := range ups {
			if _, err := t.ExecContext(ctx, `UPDATE campaign_devices SET state = $1, reason = $2, bytes = $3, updated_at = $4
 WHERE campaign_id = $5 AND device_id = $6`, u.state, u.reason, u.bytes, t.ms(), id, u.dev); err != nil {
				return fmt.Errorf("campaign outcome: %w", err)
			}
		}
		if c, err = s.loadCampaign(ctx, t, id); err != nil {
			return err
		}
		// 2. The abort rule.
		failed, done := c.Devices["failed"], c.Devices["failed"]+c.Devices["succeeded"]
		if c.AbortPercent > 0 && done >= max(c.AbortMin, 1) && failed*100 >= c.AbortPercent*done {
			return s.abortCampaign(t, id, fmt.Sprintf("abort rule: %d of %d finished devices failed (>= %d%%)", failed, done, c.AbortPercent))
		}
		if c.State == CampaignPaused {
			return nil // outcomes and the abort rule go on; offers wait
		}
		inFlight := c.Devices[CampDevOffered] + c.Devices[CampDevDownloading] + c.Devices[CampDevVerifying] + c.Devices[CampDevInstalling]
		if c.Devices["pending"] == 0 {
			if inFlight == 0 {
				_, err := t.ExecContext(ctx, `UPDATE campaigns SET state = $1, updated_at = $2 WHERE id = $3`, CampaignCompleted, t.ms(), id)
				return err
			}
			return nil
		}
		// 3. Offer more, within the pacing and the concurrency.
		var lastMinute int
		if err := t.QueryRowContext(ctx, `SELECT COUNT(*) FROM campaign_devices WHERE campaign_id = $1 AND offered_at > $2`,
			id, now.Add(-time.Minute).UnixMilli()).Scan(&lastMinute); err != nil {
			return fmt.Errorf("campaign pacing: %w", err)
		}
		n := min(c.rate()-lastMinute, c.MaxConcurrent-inFlight)
		if n <= 0 {
			return nil
		}
		fw, err := loadFirmwareTx(ctx, t, c.Firmware)
		if err != nil {
			return err
		}
		timeout, _ := time.ParseDuration(c.DeviceTimeout)
		rows, err = t.QueryContext(ctx, `SELECT device_id FROM campaign_devices WHERE campaign_id = $1 AND state = 'pending' ORDER BY device_id LIMIT `+
			strconv.Itoa(n), id)
		if err != nil {
			return fmt.Errorf("campaign pending: %w", err)
		}
		var devs []string
		for rows.Next() {
			var d string
			if rows.Scan(&d) == nil {
				devs = append(devs, d)
			}
		}
		rows.Close()
		params, _ := json.Marshal(map[string]string{"id": fw.ID, "sha256": fw.SHA256, "version": fw.Version})
		for _, dev := range devs {
			// Command creates do not take the feed_state lock this
			// transaction holds: the device's lock orders them.
			if err := t.lockDeviceCommands(dev); err != nil {
				return err
			}
			var seq int64
			if err := t.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq), 0) + 1 FROM commands WHERE device_id = $1`, dev).Scan(&seq); err != nil {
				return fmt.Errorf("next command seq: %w", err)
			}
			cmdID := newID("cmd_")
			expires := now.Add(timeout).UnixMilli()
			if _, err := t.ExecContext(ctx, `INSERT INTO commands (id, device_id, seq, name, params, state, created_at, created_by, key_id,
 request_id, expires_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, '', $9, $10, $7)`,
				cmdID, dev, seq, "firmware_update", string(params), CmdQueued, t.ms(), "campaign", id, expires); err != nil {
				return fmt.Errorf("offer: %w", err)
			}
			if _, err := t.ExecContext(ctx, `UPDATE campaign_devices SET state = 'offered', command_id = $1, offered_at = $2, updated_at = $2
 WHERE campaign_id = $3 AND device_id = $4 AND state = 'pending'`, cmdID, now.UnixMilli(), id, dev); err != nil {
				return fmt.Errorf("offer: %w", err)
			}
			offered = append(offered, CommandEvent{ID: cmdID, DeviceID: dev, State: CmdQueued, At: msTime(t.ms())})
		}
		return t.notifyCommands(offered...)
	})
	if err != nil {
		return err
	}
	s.events.publish(offered...)
	for _, o := range offered {
		s.metrics.commands.WithLabelValues("created").Inc()
		s.wakeDeviceFrontend(ctx, o.DeviceID)
	}
	return nil
}

// rate is the campaign's offers per minute now: per_minute, multiplied by
// the ramp factor once per ramp_every devices succeeded, up to
// max_per_minute.
func (c Campaign) rate() int {
	r := float64(c.PerMinute)
	if c.RampEvery > 0 && c.RampFactor > 1 {
		for steps := c.Devices["succeeded"] / c.RampEvery; steps > 0 && r < float64(c.MaxPerMinute); steps-- {
			r *= c.RampFactor
		}
	}
	return int(min(r, float64(max(c.MaxPerMinute, c.PerMinute))))
}
