package api

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/drover-telemetry/drover/internal/apiclient"
)

// LiveTokenFeed is the answer of GET /v1/feed/live-tokens.
type LiveTokenFeed = apiclient.LiveTokens

// feedLiveTokens answers GET /v1/feed/live-tokens?since=V[&wait=30s]: the
// live-client tokens in force (neither revoked nor expired) with their
// hashes and scopes, as the livefeed needs them, once a token changed
// after since (or since is 0). With wait, the request is held until one
// does or the wait ends; then changed is false and tokens empty. version
// is the follower's next since. Tokens are few (one per screen or app),
// so the whole set is answered rather than a diff: a revoked token is
// simply not in it.
func (s *Server) feedLiveTokens(w http.ResponseWriter, r *http.Request, _ *principal) error {
	q := r.URL.Query()
	since, err := strconv.ParseInt(q.Get("since"), 10, 64)
	if err != nil || since < 0 {
		return errBadRequest("since: %q, want 0 or the version of your last answer", q.Get("since"))
	}
	var wait time.Duration
	if ws := q.Get("wait"); ws != "" {
		if wait, err = time.ParseDuration(ws); err != nil || wait < 0 {
			return errBadRequest("wait: %q, want a duration such as 30s", ws)
		}
		wait = min(wait, s.cfg.FeedMaxWait)
	}
	ctx := r.Context()
	deadline := time.Now().Add(wait)
	waiting := false
	defer func() {
		if waiting {
			s.metrics.followers.Dec()
		}
	}()
	for {
		cur, _, err := s.feedState(ctx)
		if err != nil {
			return err
		}
		if since > cur {
			return errGone(since, 0)
		}
		var top sql.NullInt64
		if err := s.db.rdb.QueryRowContext(ctx, `SELECT MAX(version) FROM live_tokens`).Scan(&top); err != nil {
			return fmt.Errorf("live token feed: %w", err)
		}
		if since == 0 || top.Int64 > since {
			tokens, err := s.liveTokensInForce(r, time.Now())
			if err != nil {
				return err
			}
			writeJSON(w, http.StatusOK, LiveTokenFeed{Feed: s.db.feedID, Version: cur, Changed: true, Tokens: tokens})
			return nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			writeJSON(w, http.StatusOK, LiveTokenFeed{Feed: s.db.feedID, Version: cur, Tokens: []apiclient.LiveToken{}})
			return nil
		}
		if !waiting {
			waiting = true
			s.metrics.followers.Inc()
		}
		timer := time.NewTimer(left)
		select {
		case <-s.db.wait(cur):
		case <-timer.C:
		case <-ctx.Done():
		}
		timer.Stop()
		if ctx.Err() != nil {
			return nil
		}
	}
}

// liveTokensInForce reads the tokens neither revoked nor expired at now.
func (s *Server) liveTokensInForce(r *http.Request, now time.Time) ([]apiclient.LiveToken, error) {
	rows, err := s.db.rdb.QueryContext(r.Context(), `SELECT id, name, fleets, devices, area, token_hash, expires_at
FROM live_tokens WHERE revoked_at IS NULL AND expires_at > $1 ORDER BY id`, now.UnixMilli())
	if err != nil {
		return nil, fmt.Errorf("live token feed: %w", err)
	}
	defer rows.Close()
	out := []apiclient.LiveToken{}
	for rows.Next() {
		var lt apiclient.LiveToken
		var fleets, devices string
		var area sql.NullString
		if err := rows.Scan(&lt.ID, &lt.Name, &fleets, &devices, &area, &lt.H, &lt.ExpiresAt); err != nil {
			return nil, fmt.Errorf("live token feed: %w", err)
		}
		if err := json.Unmarshal([]byte(fleets), &lt.Fleets); err != nil {
			return nil, fmt.Errorf("live token %s: fleets: %w", lt.ID, err)
		}
		if err := json.Unmarshal([]byte(devices), &lt.Devices); err != nil {
			return nil, fmt.Errorf("live token %s: devices: %w", lt.ID, err)
		}
		if len(lt.Devices) == 0 {
			lt.Devices = nil
		}
		if area.Valid {
			lt.Area = &apiclient.Area{}
			if err := json.Unmarshal([]byte(area.String), lt.Area); err != nil {
				return nil, fmt.Errorf("live token %s: area: %w", lt.ID, err)
			}
		}
		out = append(out, lt)
	}
	return out, rows.Err()
}
