package api

import (
	"bufio"
	"compress/gzip"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/drover-telemetry/drover/internal/apiclient"
	"github.com/drover-telemetry/drover/internal/daemon"
	"github.com/drover-telemetry/drover/telemetry"
)

// The change feed: what frontends (authentication) and routers
// (enrichment) follow. Protocol in docs/api.md; the invariant behind it is
// in db.go: write transactions commit in version order, so "every change
// up to V" is a well-defined state a follower can hold.

// FeedDevice is one device as followers see it (apiclient holds the one
// definition of the feed's wire format; followers read the same type).
type FeedDevice = apiclient.FeedDevice

const feedCols = `id, state, fleet, class, region, token_hash, prev_token_hash, prev_token_expires_at, version`

func scanFeedDevice(sc scanner) (FeedDevice, error) {
	var d FeedDevice
	var fleet, class, region, h, ph sql.NullString
	var pu sql.NullInt64
	if err := sc.Scan(&d.ID, &d.State, &fleet, &class, &region, &h, &ph, &pu, &d.V); err != nil {
		return d, err
	}
	d.Fleet, d.Class, d.Region, d.H = fleet.String, class.String, region.String, h.String
	if ph.Valid && pu.Valid {
		d.PH, d.PU = ph.String, pu.Int64
	}
	return d, nil
}

// snapshotBatch is how many devices one snapshot query reads: keyset
// pages keep each query short instead of one cursor held for minutes.
const snapshotBatch = 5000

// snapshotPage is one keyset page of a snapshot, or the error that cut it.
type snapshotPage struct {
	devs []FeedDevice
	err  error
}

// feedSnapshot answers GET /v1/feed/snapshot: every device, as NDJSON, one
// object per line: a header {"snapshot":{"version":V,"format":1}}, the
// devices in id order, and a trailer {"end":{"devices":N}} (a snapshot
// without its trailer was cut: take it again). The devices reflect at
// least every change up to V (some may be newer); a follower then asks
// for changes since V, which are whole states, so applying them in order
// converges.
//
// The next page is read while this one is encoded (one page ahead): with
// PostgreSQL the query runs in another process, and reading and encoding
// in turn left each side idle half the time (a sync of 1,000,000 devices
// is the figure docs/performance.md tracks).
func (s *Server) feedSnapshot(w http.ResponseWriter, r *http.Request, _ *principal) error {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	var version int64
	if err := s.db.rdb.QueryRowContext(ctx, `SELECT version FROM feed_state WHERE id = 1`).Scan(&version); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	var out *bufio.Writer
	if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Add("Vary", "Accept-Encoding")
		gz, _ := gzip.NewWriterLevel(w, gzip.BestSpeed)
		defer gz.Close()
		out = bufio.NewWriterSize(gz, 64<<10)
	} else {
		out = bufio.NewWriterSize(w, 64<<10)
	}
	defer out.Flush()
	enc := json.NewEncoder(out)
	_ = enc.Encode(apiclient.SnapshotLine{Snapshot: &apiclient.SnapshotHeader{Version: version, Format: apiclient.SnapshotFormat, Feed: s.db.feedID}})
	pages := make(chan snapshotPage, 1)
	go s.readSnapshotPages(ctx, pages)
	n := 0
	for p := range pages {
		if p.err != nil {
			// Headers are gone: cut the stream; the missing trailer tells the
			// follower.
			s.log.Error("api: snapshot cut", "err", p.err, "devices_sent", n)
			return nil
		}
		for _, d := range p.devs {
			if err := enc.Encode(d); err != nil {
				return nil // the follower went away
			}
			n++
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	_ = enc.Encode(apiclient.SnapshotLine{End: &apiclient.SnapshotEnd{Devices: n}})
	return nil
}

// readSnapshotPages sends the devices in id order, a keyset page at a time,
// until the last (short) page or an error, then closes pages. It stops
// when ctx ends (the handler returned).
func (s *Server) readSnapshotPages(ctx context.Context, pages chan<- snapshotPage) {
	defer close(pages)
	last := ""
	for {
		devs, err := s.snapshotPage(ctx, last)
		select {
		case pages <- snapshotPage{devs: devs, err: err}:
		case <-ctx.Done():
			return
		}
		if err != nil || len(devs) < snapshotBatch {
			return
		}
		last = devs[len(devs)-1].ID
	}
}

// snapshotPage reads up to snapshotBatch devices with ids after last.
func (s *Server) snapshotPage(ctx context.Context, last string) ([]FeedDevice, error) {
	rows, err := s.db.rdb.QueryContext(ctx, `SELECT `+feedCols+` FROM devices WHERE id > $1 ORDER BY id LIMIT `+
		strconv.Itoa(snapshotBatch), last)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	devs := make([]FeedDevice, 0, snapshotBatch)
	for rows.Next() {
		d, err := scanFeedDevice(rows)
		if err != nil {
			return nil, err
		}
		devs = append(devs, d)
	}
	return devs, rows.Err()
}

// FeedChanges is the answer of GET /v1/feed/changes.
type FeedChanges = apiclient.Changes

const (
	defaultChangesLimit = 1000
	maxChangesLimit     = 10000
)

// feedChanges answers GET /v1/feed/changes?since=V[&wait=30s][&limit=N]:
// the devices changed after V in version order (whole states, tombstones
// for deletes). With wait, it answers as soon as there is a change, or
// after wait with none. 410 resync_required when V is older than what the
// feed keeps (or newer than the database: a follower of another database).
func (s *Server) feedChanges(w http.ResponseWriter, r *http.Request, _ *principal) error {
	q := r.URL.Query()
	since, err := strconv.ParseInt(q.Get("since"), 10, 64)
	if err != nil || since < 0 {
		return errBadRequest("since: %q, want the version of your snapshot or of the last changes answer (>= 0)", q.Get("since"))
	}
	limit := defaultChangesLimit
	if l := q.Get("limit"); l != "" {
		if limit, err = strconv.Atoi(l); err != nil || limit < 1 || limit > maxChangesLimit {
			return errBadRequest("limit: %q, want 1 to %d", l, maxChangesLimit)
		}
	}
	var wait time.Duration
	if ws := q.Get("wait"); ws != "" {
		if wait, err = time.ParseDuration(ws); err != nil || wait < 0 {
			return errBadRequest("wait: %q, want a duration such as 30s", ws)
		}
		wait = min(wait, s.cfg.FeedMaxWait)
	}
	ctx := r.Context()
	cur, horizon, err := s.feedState(ctx)
	if err != nil {
		return err
	}
	if since < horizon || since > cur {
		return errGone(since, horizon)
	}
	if since == cur && wait > 0 {
		s.metrics.followers.Inc()
		timer := time.NewTimer(wait)
		select {
		case <-s.db.wait(since):
		case <-timer.C:
		case <-ctx.Done():
		}
		timer.Stop()
		s.metrics.followers.Dec()
		if ctx.Err() != nil {
			return nil
		}
		if cur, horizon, err = s.feedState(ctx); err != nil {
			return err
		}
		if since < horizon {
			return errGone(since, horizon)
		}
	}
	resp := FeedChanges{Feed: s.db.feedID, Version: cur, Changes: []FeedDevice{}}
	if cur > since {
		if resp, err = s.readChanges(ctx, since, cur, limit); err != nil {
			return err
		}
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

func (s *Server) feedState(ctx context.Context) (version, horizon int64, err error) {
	if err := s.db.rdb.QueryRowContext(ctx, `SELECT version, horizon FROM feed_state WHERE id = 1`).Scan(&version, &horizon); err != nil {
		return 0, 0, fmt.Errorf("read feed state: %w", err)
	}
	s.db.observe(version)
	return version, horizon, nil
}

// readChanges merges device rows and tombstones with since < version <= cur,
// in version order, up to limit.
func (s *Server) readChanges(ctx context.Context, since, cur int64, limit int) (FeedChanges, error) {
	lim := strconv.Itoa(limit + 1)
	rows, err := s.db.rdb.QueryContext(ctx, `SELECT `+feedCols+` FROM devices WHERE version > $1 AND version <= $2 ORDER BY version LIMIT `+lim, since, cur)
	if err != nil {
		return FeedChanges{}, fmt.Errorf("read changes: %w", err)
	}
	var devs []FeedDevice
	for rows.Next() {
		d, err := scanFeedDevice(rows)
		if err != nil {
			rows.Close()
			return FeedChanges{}, fmt.Errorf("read changes: %w", err)
		}
		devs = append(devs, d)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return FeedChanges{}, fmt.Errorf("read changes: %w", err)
	}
	trows, err := s.db.rdb.QueryContext(ctx, `SELECT version, id FROM feed_tombstones WHERE version > $1 AND version <= $2 ORDER BY version LIMIT `+lim, since, cur)
	if err != nil {
		return FeedChanges{}, fmt.Errorf("read changes: %w", err)
	}
	var dels []FeedDevice
	for trows.Next() {
		d := FeedDevice{Del: true}
		if err := trows.Scan(&d.V, &d.ID); err != nil {
			trows.Close()
			return FeedChanges{}, fmt.Errorf("read changes: %w", err)
		}
		dels = append(dels, d)
	}
	trows.Close()
	if err := trows.Err(); err != nil {
		return FeedChanges{}, fmt.Errorf("read changes: %w", err)
	}
	merged := make([]FeedDevice, 0, min(limit+1, len(devs)+len(dels)))
	i, j := 0, 0
	for len(merged) <= limit && (i < len(devs) || j < len(dels)) {
		if j >= len(dels) || (i < len(devs) && devs[i].V < dels[j].V) {
			merged = append(merged, devs[i])
			i++
		} else {
			merged = append(merged, dels[j])
			j++
		}
	}
	resp := FeedChanges{Feed: s.db.feedID, Version: cur, Changes: merged}
	if len(merged) > limit {
		resp.Changes, resp.More = merged[:limit], true
		resp.Version = merged[limit-1].V
	}
	return resp, nil
}

// PresenceReport is one device's presence, as a frontend reports it.
type PresenceReport = apiclient.PresenceReport

const maxPresenceReports = apiclient.MaxPresenceReports

// feedPresence answers POST /v1/feed/presence: a frontend's batch of
// presence reports. A report older than the one stored is ignored (two
// frontends may report one device that moved), and so is a disconnect
// from a frontend that no longer holds the device (it moved, and the
// newer frontend's connect may have been reported first: commands follow
// presence, so it must not say "offline"); unknown devices are skipped
// and counted in the answer. A stored connect wakes the frontend's
// command long poll: commands queued for the device go at once. A report
// naming a firmware version records it; one naming none keeps the last.
func (s *Server) feedPresence(w http.ResponseWriter, r *http.Request, _ *principal) error {
	var in struct {
		Frontend string           `json:"frontend"`
		Reports  []PresenceReport `json:"reports"`
	}
	if err := decodeJSON(r, &in); err != nil {
		return err
	}
	if err := daemon.ValidateID(in.Frontend); err != nil {
		return errInvalid("frontend", "frontend: the reporting frontend's id: %v", err)
	}
	if len(in.Reports) > maxPresenceReports {
		return errInvalid("reports", "reports: %d, at most %d per request", len(in.Reports), maxPresenceReports)
	}
	for i, rep := range in.Reports {
		if err := telemetry.ValidateDeviceID(rep.ID); err != nil {
			return errInvalid("reports", "report %d: %v", i, err)
		}
		if len(rep.RemoteAddr) > 128 {
			return errInvalid("reports", "report %d: remote_addr over 128 bytes", i)
		}
		if rep.Firmware != "" {
			if err := telemetry.ValidateFirmwareVersion(rep.Firmware); err != nil {
				return errInvalid("reports", "report %d: firmware: %v", i, err)
			}
		}
	}
	ctx := r.Context()
	t, err := s.db.wdb.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("presence: %w", err)
	}
	defer t.Rollback()
	stmt, err := t.PrepareContext(ctx, `
INSERT INTO device_presence (device_id, last_seen_at, frontend, remote_addr, connected, firmware)
SELECT $1, CAST($2 AS BIGINT), $3, $4, CAST($5 AS INTEGER), $6 WHERE EXISTS (SELECT 1 FROM devices WHERE id = $1)
ON CONFLICT (device_id) DO UPDATE SET last_seen_at = excluded.last_seen_at, frontend = excluded.frontend,
 remote_addr = excluded.remote_addr, connected = excluded.connected,
 firmware = CASE WHEN excluded.firmware <> '' THEN excluded.firmware ELSE device_presence.firmware END
WHERE excluded.last_seen_at >= device_presence.last_seen_at
 AND (excluded.connected = 1 OR device_presence.frontend = excluded.frontend)`)
	if err != nil {
		return fmt.Errorf("presence: %w", err)
	}
	defer stmt.Close()
	stored := 0
	var connects []string
	for _, rep := range in.Reports {
		res, err := stmt.ExecContext(ctx, rep.ID, rep.SeenAt.UnixMilli(), in.Frontend, rep.RemoteAddr, boolInt(rep.Connected), rep.Firmware)
		if err != nil {
			return fmt.Errorf("presence %s: %w", rep.ID, err)
		}
		if n, _ := res.RowsAffected(); n > 0 {
			stored++
			if rep.Connected {
				connects = append(connects, rep.ID)
			}
		}
	}
	if err := t.Commit(); err != nil {
		return fmt.Errorf("presence: %w", err)
	}
	s.metrics.presence.Add(float64(len(in.Reports)))
	if len(connects) > 0 {
		s.notify.addWork(in.Frontend, connects...)
	}
	writeJSON(w, http.StatusOK, map[string]int{"received": len(in.Reports), "stored": stored})
	return nil
}

// pruneTombstones drops tombstones older than the retention, hourly, and
// raises the feed's horizon past them.
func (s *Server) pruneTombstones(ctx context.Context) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		if err := s.pruneOnce(ctx, time.Now()); err != nil && ctx.Err() == nil {
			s.log.Warn("api: prune tombstones", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *Server) pruneOnce(ctx context.Context, now time.Time) error {
	cutoff := now.Add(-s.cfg.TombstoneRetention).UnixMilli()
	return s.db.write(ctx, func(t *tx) error {
		var top sql.NullInt64
		if err := t.QueryRowContext(ctx, `SELECT MAX(version) FROM feed_tombstones WHERE at < $1`, cutoff).Scan(&top); err != nil {
			return err
		}
		if !top.Valid {
			return nil
		}
		if _, err := t.ExecContext(ctx, `DELETE FROM feed_tombstones WHERE version <= $1`, top.Int64); err != nil {
			return err
		}
		_, err := t.ExecContext(ctx, `UPDATE feed_state SET horizon = $1 WHERE id = 1 AND horizon < $1`, top.Int64)
		return err
	})
}
