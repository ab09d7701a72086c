package influx

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Results of a write request, the values of the result label of
// drover_influx_write_requests_total.
const (
	// ResultOK: InfluxDB stored every point.
	ResultOK = "ok"
	// ResultPermanent: InfluxDB refused the batch for good (HTTP 400, 413…)
	// or a record could not be encoded; the writer bisects the batch.
	ResultPermanent = "permanent"
	// ResultTransient: a 5xx, 429 or 408, a timeout, a refused or broken
	// connection; the writer retries.
	ResultTransient = "transient"
	// ResultConfig: InfluxDB refused the writer itself (HTTP 401, 403, 404:
	// bad credentials, missing database): an operator must act; the writer
	// retries, since the records are not at fault.
	ResultConfig = "config"
	// ResultCanceled: the caller's context ended first.
	ResultCanceled = "canceled"
)

// metrics is the sink's Prometheus instruments.
type metrics struct {
	points        prometheus.Counter
	requests      *prometheus.CounterVec
	duration      prometheus.Histogram
	bytes         prometheus.Counter
	fieldsDropped prometheus.Counter
	dbMissing     prometheus.Gauge
	dbCreated     prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		points: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_influx_points_written_total",
			Help: "Points InfluxDB confirmed (re-deliveries included: they overwrite themselves).",
		}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_influx_write_requests_total",
			Help: "InfluxDB write requests by result: ok, permanent (refused for good), transient (retried), config (credentials or database wrong), canceled.",
		}, []string{"result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "drover_influx_write_duration_seconds",
			Help:    "Duration of InfluxDB write requests, whatever their result.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12), // 1 ms … ~60 s
		}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_influx_write_bytes_total",
			Help: "Line-protocol bytes sent to InfluxDB (before gzip), every attempt counted.",
		}),
		fieldsDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_influx_fields_dropped_total",
			Help: "Field values left out of points: non-finite numbers, extra keys that collide once sanitised.",
		}),
		dbMissing: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "drover_influx_database_missing",
			Help: "1 while InfluxDB says the database does not exist (the writer holds the records until it does), else 0.",
		}),
		dbCreated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_influx_databases_created_total",
			Help: "Databases the sink created because InfluxDB said they did not exist (-influx-create-database).",
		}),
	}
	for _, r := range []string{ResultOK, ResultPermanent, ResultTransient, ResultConfig, ResultCanceled} {
		m.requests.WithLabelValues(r)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.points, m.requests, m.duration, m.bytes, m.fieldsDropped, m.dbMissing, m.dbCreated} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, fmt.Errorf("register influx metrics (one influx sink per registry): %w", err)
			}
			return nil, fmt.Errorf("register influx metrics: %w", err)
		}
	}
	return m, nil
}
