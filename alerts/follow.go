package alerts

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/drover-telemetry/drover/alerts/eval"
	"github.com/drover-telemetry/drover/internal/atomicfile"
	"github.com/drover-telemetry/drover/internal/backoff"
)

// ruleStore keeps the rule sets the queue refers to, one file per
// version: DIR/<version>.json. A rules entry in the queue names a version;
// the file is written (fsynced) before the entry is appended, so a replay
// always finds it.
type ruleStore struct {
	dir    string
	logger *slog.Logger
	mu     sync.Mutex
	cache  map[int64]*eval.RuleSet
}

func openRuleStore(dir string, logger *slog.Logger) (*ruleStore, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("rule store: %w", err)
	}
	return &ruleStore{dir: dir, logger: logger, cache: map[int64]*eval.RuleSet{}}, nil
}

func (s *ruleStore) path(v int64) string {
	return filepath.Join(s.dir, strconv.FormatInt(v, 10)+".json")
}

func (s *ruleStore) save(rs *eval.RuleSet) error {
	b, err := json.Marshal(rs)
	if err != nil {
		return fmt.Errorf("rule store: encode: %w", err)
	}
	if err := atomicfile.WriteFile(s.path(rs.Version), b, 0o600); err != nil {
		return fmt.Errorf("rule store: %w", err)
	}
	s.mu.Lock()
	s.cache[rs.Version] = rs
	s.mu.Unlock()
	return nil
}

func (s *ruleStore) load(v int64) (*eval.RuleSet, error) {
	s.mu.Lock()
	rs := s.cache[v]
	s.mu.Unlock()
	if rs != nil {
		return rs, nil
	}
	b, err := os.ReadFile(s.path(v))
	if err != nil {
		return nil, fmt.Errorf("rule set %d: %w", v, err)
	}
	rs = &eval.RuleSet{}
	if err := json.Unmarshal(b, rs); err != nil {
		return nil, fmt.Errorf("rule set %d: %w", v, err)
	}
	s.mu.Lock()
	s.cache[v] = rs
	s.mu.Unlock()
	return rs, nil
}

// versions lists the versions on disk, in order.
func (s *ruleStore) versions() []int64 {
	names, _ := filepath.Glob(filepath.Join(s.dir, "*.json"))
	var vs []int64
	for _, n := range names {
		if v, err := strconv.ParseInt(strings.TrimSuffix(filepath.Base(n), ".json"), 10, 64); err == nil {
			vs = append(vs, v)
		}
	}
	slices.Sort(vs)
	return vs
}

// prune removes the versions older than the one in force: no entry that
// is still to be evaluated can name them.
func (s *ruleStore) prune(inForce int64) {
	for _, v := range s.versions() {
		if v >= inForce {
			break
		}
		_ = os.Remove(s.path(v))
		s.mu.Lock()
		delete(s.cache, v)
		s.mu.Unlock()
	}
}

// follower brings rule sets in: from the rules file (polled for changes),
// from the API (long poll), or none (the built-in defaults). Each new one
// is saved and journaled in the queue (a rules entry), so the evaluation
// applies it at that point, and is given to the outputs (webhooks).
type follower struct {
	e      *Engine
	client *http.Client

	mu      sync.Mutex
	cur     *eval.RuleSet
	changed chan struct{} // closed and replaced at each change
	fileSig string        // the rules file's size and mtime when last read
}

func newFollower(e *Engine) *follower {
	return &follower{e: e, client: &http.Client{Timeout: 60 * time.Second, Transport: e.apiTr}, changed: make(chan struct{})}
}

// current returns the newest rule set followed, and a channel closed when
// it changes.
func (f *follower) current() (*eval.RuleSet, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cur, f.changed
}

func (f *follower) version() int64 {
	rs, _ := f.current()
	if rs == nil {
		return 0
	}
	return rs.Version
}

// first gets the rule set to start with: the source's, or, when the API
// does not answer, the last one saved. Without any source the built-in
// defaults apply (version 0, no entry).
func (f *follower) first(ctx context.Context) error {
	e := f.e
	switch {
	case e.cfg.RulesFile != "":
		rs, err := f.readFile()
		if err != nil {
			return fmt.Errorf("alerts: rules file: %w", err)
		}
		return f.apply(ctx, rs, "file")
	case e.cfg.APIURL != "":
		retry := backoff.New(200*time.Millisecond, 10*time.Second, nil)
		started := time.Now()
		for {
			rs, err := f.fetch(ctx, -1, 0)
			if err == nil && rs != nil {
				return f.apply(ctx, rs, "api")
			}
			if err != nil {
				e.m.rulesLoads.WithLabelValues("api", "error").Inc()
			}
			if vs := e.rules.versions(); len(vs) > 0 && time.Since(started) > 5*time.Second {
				cached, lerr := e.rules.load(vs[len(vs)-1])
				if lerr == nil {
					e.logger.Warn("alerts: the API does not answer; starting with the last rule set it gave", "version", cached.Version, "err", err)
					return f.apply(ctx, cached, "cache")
				}
			}
			e.setReady(errNoRules)
			// An API starting beside the engine (drover all) takes a
			// moment: that is not worth a warning.
			level := slog.LevelInfo
			if time.Since(started) > 15*time.Second {
				level = slog.LevelWarn
			}
			e.logger.Log(ctx, level, "alerts: waiting for the API's rule set (no rule set saved yet)", "api", e.cfg.APIURL, "err", err)
			if !backoff.Sleep(ctx, retry.Next()) {
				return ctx.Err()
			}
		}
	}
	f.mu.Lock()
	f.cur = &eval.RuleSet{}
	f.mu.Unlock()
	return nil
}

// run follows the source until ctx ends.
func (f *follower) run(ctx context.Context) {
	e := f.e
	switch {
	case e.cfg.RulesFile != "":
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if sig := fileSig(e.cfg.RulesFile); sig == "" || sig == f.fileSigNow() {
				continue
			}
			rs, err := f.readFile()
			if err != nil {
				e.m.rulesLoads.WithLabelValues("file", "error").Inc()
				e.logger.Error("alerts: rules file refused; the rule set in force stays", "file", e.cfg.RulesFile, "err", err)
				continue
			}
			if err := f.apply(ctx, rs, "file"); err != nil && ctx.Err() == nil {
				e.logger.Error("alerts: cannot journal the new rule set", "err", err)
			}
		}
	case e.cfg.APIURL != "":
		retry := backoff.New(500*time.Millisecond, 10*time.Second, nil)
		for ctx.Err() == nil {
			rs, err := f.fetch(ctx, f.version(), 25*time.Second)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				e.m.rulesLoads.WithLabelValues("api", "error").Inc()
				e.logger.Warn("alerts: following the API's rule set failed; retrying (the rule set in force stays)", "err", err)
				backoff.Sleep(ctx, retry.Next())
				continue
			}
			retry.Reset()
			if rs != nil {
				if err := f.apply(ctx, rs, "api"); err != nil && ctx.Err() == nil {
					e.logger.Error("alerts: cannot journal the new rule set", "err", err)
				}
			}
		}
	}
}

func (f *follower) fileSigNow() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fileSig
}

func fileSig(path string) string {
	st, err := os.Stat(path)
	if err != nil {
		return ""
	}
	return fmt.Sprintf("%d/%d", st.Size(), st.ModTime().UnixNano())
}

// readFile reads and checks the rules file. Its version is the time it was
// read (ms), after the previous one's: a file has no version of its own.
func (f *follower) readFile() (*eval.RuleSet, error) {
	path := f.e.cfg.RulesFile
	sig := fileSig(path)
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	rs, err := eval.ParseRuleSet(b)
	if err != nil {
		return nil, err
	}
	rs.Version = max(time.Now().UnixMilli(), f.version()+1)
	f.mu.Lock()
	f.fileSig = sig
	f.mu.Unlock()
	return rs, nil
}

// fetch asks the API for its rule set: at once (since < 0), or when newer
// than since, waiting up to wait. It returns nil when nothing changed.
func (f *follower) fetch(ctx context.Context, since int64, wait time.Duration) (*eval.RuleSet, error) {
	u := strings.TrimRight(f.e.cfg.APIURL, "/") + "/v1/alerts/config"
	q := url.Values{}
	if since >= 0 {
		q.Set("since", strconv.FormatInt(since, 10))
		q.Set("wait", wait.String())
	}
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	key, err := f.e.apiKey()
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := f.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusNotModified:
		return nil, nil
	case http.StatusOK:
	default:
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("GET /v1/alerts/config: %s: %s", resp.Status, bytes.TrimSpace(b))
	}
	var rs eval.RuleSet
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<30)).Decode(&rs); err != nil {
		return nil, fmt.Errorf("GET /v1/alerts/config: %w", err)
	}
	return &rs, nil
}

// apiKey is the key for the API.
func (e *Engine) apiKey() (string, error) {
	if e.cfg.APIKey != "" || e.cfg.APIKeyFunc == nil {
		return e.cfg.APIKey, nil
	}
	k, err := e.cfg.APIKeyFunc()
	if err != nil {
		return "", fmt.Errorf("api key: %w", err)
	}
	return strings.TrimSpace(k), nil
}

// apply saves rs and journals it; the evaluation applies it when it gets
// to that entry, the outputs at once.
func (f *follower) apply(ctx context.Context, rs *eval.RuleSet, source string) error {
	e := f.e
	if rs.Version == f.version() && f.cur != nil {
		return nil
	}
	if err := e.rules.save(rs); err != nil {
		e.m.rulesLoads.WithLabelValues(source, "error").Inc()
		return err
	}
	var buf [9]byte
	buf[0] = entryRules
	binary.LittleEndian.PutUint64(buf[1:], uint64(rs.Version))
	retry := backoff.New(100*time.Millisecond, 5*time.Second, nil)
	for {
		q := e.q.Load()
		if q == nil {
			return errors.New("queue not open")
		}
		_, err := q.Append(ctx, buf[:])
		if err == nil {
			break
		}
		e.logger.Warn("alerts: cannot journal the new rule set; retrying", "version", rs.Version, "err", err)
		if !backoff.Sleep(ctx, retry.Next()) {
			return ctx.Err()
		}
	}
	e.m.rulesLoads.WithLabelValues(source, "ok").Inc()
	f.mu.Lock()
	f.cur = rs
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
	e.logger.Info("alerts: new rule set", "source", source, "version", rs.Version, "rules", len(rs.Rules),
		"geofences", len(rs.Geofences), "webhooks", len(rs.Webhooks))
	return nil
}
