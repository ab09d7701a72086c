package influx

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	influxdb2 "github.com/influxdata/influxdb-client-go/v2"
	"github.com/influxdata/influxdb-client-go/v2/api"
	influxhttp "github.com/influxdata/influxdb-client-go/v2/api/http"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/storagewriter/sink"
	"github.com/drover-telemetry/drover/telemetry"
)

// Name is the sink's name in logs and metrics.
const Name = "influx"

// ErrClosed is returned by Write after Close.
var ErrClosed = errors.New("influx sink closed")

// Sink writes enriched records to InfluxDB, one point per reading. It
// implements [sink.Sink] and is safe for concurrent use.
type Sink struct {
	cfg     Config
	logger  *slog.Logger
	metrics *metrics
	client  influxdb2.Client
	write   api.WriteAPIBlocking
	enc     *encoder
	bufs    sync.Pool    // *[]byte line-protocol buffers
	http    *http.Client // the client's, for Check and CREATE DATABASE
	closed  atomic.Bool
	refused atomic.Pointer[refusal] // see State
}

var _ sink.Sink = (*Sink)(nil)

// New returns a sink for cfg. It does not contact InfluxDB (see
// [Sink.Ping]); a nil reg registers no metrics.
func New(cfg Config, logger *slog.Logger, reg prometheus.Registerer) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	// Our own transport: the client's default one caps idle connections per
	// host at 2 and would share net/http's default with everything else.
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 16
	opts := influxdb2.DefaultOptions().
		SetHTTPClient(&http.Client{Transport: tr}). // per-request timeouts come from ctx
		SetPrecision(time.Nanosecond).
		SetUseGZip(cfg.GZip).
		SetApplicationName("drover")
	client := influxdb2.NewClientWithOptions(cfg.URL, cfg.Token, opts)
	s := &Sink{
		http:    opts.HTTPClient(),
		cfg:     cfg,
		logger:  logger.With("sink", Name),
		metrics: m,
		client:  client,
		// InfluxDB 1.8 ignores the organisation; "-" is what its docs use.
		write: client.WriteAPIBlocking("-", cfg.bucket()),
		enc:   newEncoder(cfg.Measurement, func(n int) { m.fieldsDropped.Add(float64(n)) }),
	}
	s.bufs.New = func() any { b := make([]byte, 0, 64<<10); return &b }
	return s, nil
}

// Name returns "influx".
func (s *Sink) Name() string { return Name }

// Write writes recs as points in one request. It returns nil only when
// InfluxDB has stored every point (InfluxDB 1.8 answers a write after its WAL
// append). A refusal for good (HTTP 400 such as a field type conflict or a
// partial write, 413, other 4xx about the request) is wrapped with
// [sink.Permanent], and so is a record that cannot be encoded; anything else
// (5xx, 429, 408, 401/403/404, a series limit of InfluxDB's configuration, a
// timeout, a connection error, ctx ending) is transient. Re-writing records is harmless: each lands on its own point.
func (s *Sink) Write(ctx context.Context, recs []*telemetry.EnrichedRecord) error {
	if len(recs) == 0 {
		return nil
	}
	if s.closed.Load() {
		return ErrClosed
	}
	if err := ctx.Err(); err != nil {
		s.metrics.requests.WithLabelValues(ResultCanceled).Inc()
		return fmt.Errorf("influx write: %w", err)
	}
	bp := s.bufs.Get().(*[]byte)
	// A full reading is ~440 bytes of line protocol: grow once, not by doubling.
	b := slices.Grow((*bp)[:0], len(recs)*512)
	for i, rec := range recs {
		var err error
		if b, err = s.enc.appendRecord(b, rec); err != nil {
			s.putBuf(bp, b)
			s.metrics.requests.WithLabelValues(ResultPermanent).Inc()
			r := rec.GetRecord()
			return sink.Permanent(fmt.Errorf("influx write: record %d (device %q seq %d): %w",
				i, r.GetDeviceId(), r.GetReading().GetSeq(), err))
		}
	}
	// The client takes a string; copying it lets us reuse b at once.
	body := string(b[:len(b)-1]) // without the last newline
	s.putBuf(bp, b)

	wctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	start := time.Now()
	err := s.write.WriteRecord(wctx, body)
	took := time.Since(start)
	s.metrics.duration.Observe(took.Seconds())
	s.metrics.bytes.Add(float64(len(body)))
	if err == nil {
		s.metrics.requests.WithLabelValues(ResultOK).Inc()
		s.metrics.points.Add(float64(len(recs)))
		if s.refused.Load() != nil {
			s.setRefused(nil)
		}
		return nil
	}
	result, err := s.classify(ctx, wctx, err)
	s.metrics.requests.WithLabelValues(result).Inc()
	if result == ResultConfig {
		// The records are fine and will be retried, but nothing gets
		// through until an operator acts (or the database is created).
		// The writer logs the outage once and says so in /readyz; no
		// line per retry here.
		err = s.createIfMissing(ctx, err)
		if err == nil {
			err = errors.New("influx write: InfluxDB database created; retrying")
		}
	}
	s.logger.Debug("write failed", "result", result, "points", len(recs), "bytes", len(body),
		"took", took, "err", err)
	return err
}

// HTTPError is InfluxDB's refusal of a write request. Write's errors wrap
// it when InfluxDB answered with an error status.
type HTTPError struct {
	// StatusCode is the HTTP status.
	StatusCode int
	// Message is InfluxDB's reason: the "error" of InfluxDB 1.8 (e.g.
	// "partial write: field type conflict: …"), the message of 2.x, or the
	// status line.
	Message string
	err     error // the client's error
}

func (e *HTTPError) Error() string {
	return fmt.Sprintf("influx write: HTTP %d: %s", e.StatusCode, e.Message)
}

// Unwrap returns the client's error.
func (e *HTTPError) Unwrap() error { return e.err }

// classify maps a write error to a result and the error to return: wrapped
// with sink.Permanent for ResultPermanent, plain otherwise.
func (s *Sink) classify(ctx, wctx context.Context, err error) (string, error) {
	var he *influxhttp.Error
	if errors.As(err, &he) && he.StatusCode != 0 {
		herr := &HTTPError{StatusCode: he.StatusCode, Message: httpMessage(he), err: err}
		switch code := he.StatusCode; {
		case code == http.StatusUnauthorized || code == http.StatusForbidden || code == http.StatusNotFound ||
			strings.Contains(herr.Message, "retention policy not found"): // 1.8 says 500
			return ResultConfig, s.refuse(herr)
		case code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code >= 500:
			return ResultTransient, herr
		case code == http.StatusBadRequest && seriesLimit(herr.Message):
			return ResultConfig, s.refuse(herr)
		case code >= 400:
			return ResultPermanent, sink.Permanent(herr)
		default: // 1xx, 3xx: nothing sensible was stored
			return ResultTransient, herr
		}
	}
	switch {
	case ctx.Err() != nil:
		return ResultCanceled, fmt.Errorf("influx write: %w (%w)", ctx.Err(), err)
	case wctx.Err() != nil:
		return ResultTransient, fmt.Errorf("influx write: no answer within %v: %w", s.cfg.Timeout, err)
	}
	return ResultTransient, fmt.Errorf("influx write: %w", err)
}

// seriesLimit reports whether InfluxDB refused points for a limit of its own
// configuration, not for anything in them: max-values-per-tag (InfluxDB
// 1.8's default of 100,000 device ids is below a large fleet) or
// max-series-per-database. Raising the limit lets the same points in, so
// they must be retried, not dead-lettered.
func seriesLimit(msg string) bool {
	return strings.Contains(msg, "max-values-per-tag limit exceeded") ||
		strings.Contains(msg, "max-series-per-database limit exceeded")
}

// httpMessage is InfluxDB's reason for an HTTP error: the JSON "error" of
// InfluxDB 1.8 (which the client does not decode: it is also in the
// X-Influxdb-Error header), the message of InfluxDB 2.x, or the status line.
func httpMessage(he *influxhttp.Error) string {
	msg := he.Message
	if msg == "" && he.Header != nil {
		msg = he.Header.Get("X-Influxdb-Error")
	}
	if msg == "" {
		msg = he.Code
	}
	if msg == "" {
		msg = http.StatusText(he.StatusCode)
	}
	return strings.TrimSpace(msg)
}

func (s *Sink) putBuf(bp *[]byte, b []byte) {
	if cap(b) > 16<<20 { // don't keep a huge batch's buffer forever
		return
	}
	*bp = b[:0]
	s.bufs.Put(bp)
}

// Ping checks that InfluxDB answers, for readiness checks.
func (s *Sink) Ping(ctx context.Context) error {
	ok, err := s.client.Ping(ctx)
	if err != nil {
		return fmt.Errorf("influx ping: %w", err)
	}
	if !ok {
		return errors.New("influx ping: server not ready")
	}
	return nil
}

// Close releases the sink's connections. Write after Close returns
// ErrClosed; Close may be called more than once.
func (s *Sink) Close(context.Context) error {
	if s.closed.Swap(true) {
		return nil
	}
	s.client.Close()
	return nil
}
