package livefeed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/internal/apiclient"
	"github.com/drover-telemetry/drover/internal/backoff"
)

// Live-client tokens from the control plane (-registry-api): the tokens an
// operator issues with POST /v1/live-tokens, each for some fleets,
// optionally narrowed to devices and a map area, until an expiry. The
// livefeed long-polls GET /v1/feed/live-tokens, which answers the whole
// set in force whenever one changed, and puts it in force beside the
// clients file: a new token works, and a revoked one (absent from the
// set) closes its clients with CloseRevoked, within the long poll's
// answer time (well under 2 s). Expiry needs no answer: each token carries
// it. The set is kept in a cache file (-tokens-cache), so that a livefeed
// restarted while the API is down still admits its clients.

const (
	tokensCacheKind   = "live-tokens"
	tokensCacheFormat = 1
	tokensWait        = 30 * time.Second
)

// tokenFollower keeps the control plane's tokens in force.
type tokenFollower struct {
	client *apiclient.Client
	auth   *authStore
	cache  string
	log    *slog.Logger
	m      *tokenMetrics

	feed    string
	version int64
}

type tokenMetrics struct {
	tokens   prometheus.Gauge
	lastSync prometheus.Gauge
	errors   prometheus.Counter
}

func newTokenFollower(cfg apiclient.Config, cache string, as *authStore, logger *slog.Logger, reg prometheus.Registerer) (*tokenFollower, error) {
	client, err := apiclient.New(cfg)
	if err != nil {
		return nil, err
	}
	m := &tokenMetrics{
		tokens: prometheus.NewGauge(prometheus.GaugeOpts{Name: "drover_livefeed_api_tokens",
			Help: "Live-client tokens from the control plane in force."}),
		lastSync: prometheus.NewGauge(prometheus.GaugeOpts{Name: "drover_livefeed_api_tokens_last_sync_timestamp_seconds",
			Help: "When the control plane last answered the token follower (unix seconds)."}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_livefeed_api_token_errors_total",
			Help: "Failed requests for live-client tokens to the control plane; the tokens in force stay."}),
	}
	for _, c := range []prometheus.Collector{m.tokens, m.lastSync, m.errors} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register livefeed token metrics: %w", err)
		}
	}
	return &tokenFollower{client: client, auth: as, cache: cache, log: logger, m: m}, nil
}

// loadCache puts the cached set in force, if there is a whole one; the
// follower then asks for the set anew (a cache is a stopgap, not a
// version to resume from: the set is small).
func (t *tokenFollower) loadCache() {
	if t.cache == "" {
		return
	}
	cr, err := apiclient.OpenCache(t.cache, tokensCacheKind, tokensCacheFormat)
	if err == nil {
		var tokens []apiclient.LiveToken
		if err = json.NewDecoder(cr.Payload()).Decode(&tokens); err != nil {
			err = fmt.Errorf("%w: %v", apiclient.ErrCacheDamaged, err)
		} else {
			_, _ = io.Copy(io.Discard, cr.Payload()) // what the decoder left unread, into the checksum
			err = cr.Verify()
		}
		_ = cr.Close()
		if err == nil {
			t.auth.setAPITokens(tokens)
			t.m.tokens.Set(float64(len(tokens)))
			t.log.Info("livefeed: serving the cached live-client tokens until the control plane answers",
				"file", t.cache, "tokens", len(tokens), "written", cr.Meta.WrittenAt)
			return
		}
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case apiclient.Damaged(err):
		t.log.Error("livefeed: live-client token cache damaged; refused, waiting for the control plane", "file", t.cache, "err", err)
	default:
		t.log.Error("livefeed: live-client token cache unreadable; waiting for the control plane", "file", t.cache, "err", err)
	}
}

func (t *tokenFollower) writeCache(tokens []apiclient.LiveToken) {
	if t.cache == "" {
		return
	}
	meta := apiclient.CacheMeta{Kind: tokensCacheKind, Format: tokensCacheFormat, Feed: t.feed, Version: t.version,
		Source: t.client.URL(), Count: len(tokens)}
	err := os.MkdirAll(filepath.Dir(t.cache), 0o700)
	if err == nil {
		err = apiclient.WriteCache(t.cache, meta, func(w io.Writer) error { return json.NewEncoder(w).Encode(tokens) })
	}
	if err != nil {
		t.log.Error("livefeed: write live-client token cache", "file", t.cache, "err", err)
	}
}

// run follows the control plane until ctx ends. notBefore, when set, holds
// the first request (drover all: until its own API has started).
func (t *tokenFollower) run(ctx context.Context, notBefore <-chan struct{}) {
	defer t.client.Close()
	if notBefore != nil {
		select {
		case <-notBefore:
		case <-ctx.Done():
			return
		}
	}
	bo := backoff.New(250*time.Millisecond, 15*time.Second, nil)
	failing := false
	for ctx.Err() == nil {
		lt, err := t.client.LiveTokens(ctx, t.version, tokensWait)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, apiclient.ErrResync) || (err == nil && t.version > 0 && lt.Feed != t.feed) {
			t.version = 0 // another database, or one restored from an older backup: ask for the whole set
			continue
		}
		if err != nil {
			t.m.errors.Inc()
			if !failing {
				t.log.Warn("livefeed: the control plane does not answer for live-client tokens; the tokens in force stay; retrying",
					"api", t.client.URL(), "err", err)
				failing = true
			}
			if !backoff.Sleep(ctx, bo.Next()) {
				return
			}
			continue
		}
		if failing {
			t.log.Info("livefeed: the control plane answers again for live-client tokens")
			failing = false
		}
		bo.Reset()
		t.m.lastSync.SetToCurrentTime()
		t.feed, t.version = lt.Feed, lt.Version
		if lt.Changed {
			t.auth.setAPITokens(lt.Tokens)
			t.m.tokens.Set(float64(len(lt.Tokens)))
			t.log.Debug("livefeed: live-client tokens from the control plane", "tokens", len(lt.Tokens), "version", lt.Version)
			t.writeCache(lt.Tokens)
		}
	}
}
