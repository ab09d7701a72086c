package influx

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/drover-telemetry/drover/storagewriter/sink"
)

// refusal is InfluxDB refusing the writer itself (not its records): a
// database or retention policy that does not exist, or credentials it
// rejects. It lasts until a write or a Check succeeds.
type refusal struct {
	err       error // wrapped with sink.Misconfigured, saying what to do
	dbMissing bool
}

// State returns why InfluxDB refuses the writer right now (the database
// does not exist, the credentials are refused), saying what to do, or nil.
// It is cheap: it reports what the last write or [Sink.Check] found.
func (s *Sink) State() error {
	if r := s.refused.Load(); r != nil {
		return r.err
	}
	return nil
}

// setRefused records a refusal (nil: none) and the database-missing gauge.
func (s *Sink) setRefused(r *refusal) {
	s.refused.Store(r)
	if r != nil && r.dbMissing {
		s.metrics.dbMissing.Set(1)
	} else {
		s.metrics.dbMissing.Set(0)
	}
}

// Check asks InfluxDB whether the writes will go through: it sends an empty
// write to the database and retention policy (InfluxDB answers 204 when
// both exist and the credentials may write, 404 when the database does not
// exist) and, with Config.CreateDatabase, creates a missing database. It
// returns nil when writes can go; otherwise an error that says why, wrapped
// with [sink.Misconfigured] when an operator must act. [Sink.State] reports
// the same until the next write or Check.
func (s *Sink) Check(ctx context.Context) error {
	err := s.probe(ctx)
	if err == nil {
		return nil
	}
	if err = s.createIfMissing(ctx, err); err != nil {
		return err
	}
	return s.probe(ctx)
}

// createIfMissing creates the database when err says it is missing and
// Config.CreateDatabase is set, and returns nil when it did; it returns
// err otherwise, with the reason creating it failed.
func (s *Sink) createIfMissing(ctx context.Context, err error) error {
	r := s.refused.Load()
	if r == nil || !r.dbMissing || !s.cfg.CreateDatabase {
		return err
	}
	if cerr := s.createDatabase(ctx); cerr != nil {
		return fmt.Errorf("%w; -influx-create-database failed: %w", err, cerr)
	}
	return nil
}

// probe sends the empty write and classifies the answer as Write does.
func (s *Sink) probe(ctx context.Context) error {
	q := url.Values{"org": {"-"}, "bucket": {s.cfg.bucket()}, "precision": {"ns"}}
	pctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(pctx, http.MethodPost, strings.TrimRight(s.cfg.URL, "/")+"/api/v2/write?"+q.Encode(), http.NoBody)
	if err != nil {
		return fmt.Errorf("influx check: %w", err)
	}
	s.authorize(req)
	resp, err := s.http.Do(req)
	if err != nil {
		return fmt.Errorf("influx check: InfluxDB does not answer: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 == 2 {
		s.setRefused(nil)
		return nil
	}
	return s.refuse(&HTTPError{StatusCode: resp.StatusCode, Message: responseMessage(resp)})
}

// refuse returns herr, and when it is about the writer's configuration
// rather than the records, records it as the sink's state and returns it
// wrapped with sink.Misconfigured, saying what to do.
func (s *Sink) refuse(herr *HTTPError) error {
	msg := herr.Message
	r := &refusal{}
	switch {
	case strings.Contains(msg, "retention policy not found"):
		r.err = fmt.Errorf("InfluxDB retention policy %q does not exist on database %q: create it (CREATE RETENTION POLICY) or fix -influx-retention-policy: %w",
			s.cfg.RetentionPolicy, s.cfg.Database, herr)
	case herr.StatusCode == http.StatusNotFound:
		r.dbMissing = true
		r.err = fmt.Errorf("InfluxDB database %q does not exist: create it (CREATE DATABASE %s, with the retention policy you want) or start the writer with -influx-create-database: %w",
			s.cfg.Database, quoteIdent(s.cfg.Database), herr)
	case herr.StatusCode == http.StatusUnauthorized || herr.StatusCode == http.StatusForbidden:
		r.err = fmt.Errorf("InfluxDB refuses the writer's credentials (-influx-token-file or its environment variable): %w", herr)
	case seriesLimit(msg):
		r.err = fmt.Errorf("InfluxDB refuses new series by its own limits: raise max-values-per-tag / max-series-per-database in influxdb.conf (0 = unlimited) and restart it: %w", herr)
	default:
		return herr
	}
	r.err = sink.Misconfigured(r.err)
	s.setRefused(r)
	return r.err
}

// createDatabase runs CREATE DATABASE through the v1 /query API (InfluxDB
// 1.x; 2.x and 3 have no such statement: create the bucket there).
func (s *Sink) createDatabase(ctx context.Context) error {
	form := url.Values{"q": {"CREATE DATABASE " + quoteIdent(s.cfg.Database)}}
	cctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(cctx, http.MethodPost, strings.TrimRight(s.cfg.URL, "/")+"/query", strings.NewReader(form.Encode()))
	if err != nil {
		return fmt.Errorf("create database: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	s.authorize(req)
	resp, err := s.http.Do(req)
	if err != nil {
		return fmt.Errorf("create database: %w", err)
	}
	defer resp.Body.Close()
	var body struct {
		Results []struct {
			Error string `json:"error"`
		} `json:"results"`
		Error string `json:"error"`
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	_ = json.Unmarshal(b, &body)
	switch {
	case body.Error != "":
		return fmt.Errorf("create database: HTTP %d: %s", resp.StatusCode, body.Error)
	case len(body.Results) > 0 && body.Results[0].Error != "":
		return fmt.Errorf("create database: %s", body.Results[0].Error)
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("create database: HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	s.metrics.dbCreated.Inc()
	s.logger.Info("InfluxDB database created (-influx-create-database)", "database", s.cfg.Database, "url", s.cfg.URL)
	return nil
}

// authorize sets the credentials the client sets on writes.
func (s *Sink) authorize(req *http.Request) {
	if s.cfg.Token != "" {
		req.Header.Set("Authorization", "Token "+s.cfg.Token)
	}
}

// responseMessage is InfluxDB's reason in an error answer: the JSON "error"
// (1.x) or "message" (2.x), the X-Influxdb-Error header, or the status.
func responseMessage(resp *http.Response) string {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var body struct {
		Error   string `json:"error"`
		Message string `json:"message"`
	}
	_ = json.Unmarshal(b, &body)
	switch {
	case body.Error != "":
		return body.Error
	case body.Message != "":
		return body.Message
	case resp.Header.Get("X-Influxdb-Error") != "":
		return resp.Header.Get("X-Influxdb-Error")
	}
	return http.StatusText(resp.StatusCode)
}

// quoteIdent quotes an InfluxQL identifier.
func quoteIdent(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}
