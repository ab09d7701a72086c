package queue

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	depthEntries  prometheus.Gauge
	depthBytes    prometheus.Gauge
	inflight      prometheus.Gauge
	degraded      prometheus.Gauge
	appendedTotal prometheus.Counter
	appendedBytes prometheus.Counter
	records       prometheus.Counter
	fsyncs        prometheus.Counter
	held          prometheus.Counter
	fsyncSeconds  prometheus.Histogram
	appendSeconds prometheus.Histogram
	rejected      *prometheus.CounterVec
	removed       prometheus.Counter
	redelivered   prometheus.Counter
	quarantined   prometheus.Counter
	repairs       *prometheus.CounterVec
	storageErrors prometheus.Counter
	maxBytes      prometheus.Gauge
	fillRatio     prometheus.Gauge
	volumeFree    prometheus.Gauge
	volumeSize    prometheus.Gauge

	// Per cursor (cursor.go), labelled cursor="NAME".
	cursorLagEntries  *prometheus.GaugeVec
	cursorLagBytes    *prometheus.GaugeVec
	cursorFill        *prometheus.GaugeVec
	cursorInflight    *prometheus.GaugeVec
	cursorRedelivered *prometheus.CounterVec
}

func newMetrics(name string, reg prometheus.Registerer) *metrics {
	cl := prometheus.Labels{"queue": name}
	latency := []float64{.0001, .00025, .0005, .001, .002, .005, .01, .025, .05, .1, .25, 1}
	m := &metrics{
		depthEntries:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "drover_queue_depth_entries", Help: "Entries held: appended and not yet removed.", ConstLabels: cl}),
		depthBytes:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "drover_queue_depth_bytes", Help: "Entry bytes held: appended and not yet removed.", ConstLabels: cl}),
		inflight:          prometheus.NewGauge(prometheus.GaugeOpts{Name: "drover_queue_inflight_entries", Help: "Entries read by the consumer and not yet acknowledged downstream.", ConstLabels: cl}),
		degraded:          prometheus.NewGauge(prometheus.GaugeOpts{Name: "drover_queue_storage_failed", Help: "1 while the disk refuses writes (appends fail fast), else 0.", ConstLabels: cl}),
		appendedTotal:     prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_queue_appended_entries_total", Help: "Entries appended and made durable.", ConstLabels: cl}),
		appendedBytes:     prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_queue_appended_bytes_total", Help: "Entry bytes appended and made durable.", ConstLabels: cl}),
		records:           prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_queue_records_total", Help: "Records (dque items) written; entries per record shows group commit at work.", ConstLabels: cl}),
		fsyncs:            prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_queue_fsyncs_total", Help: "fsync calls made to acknowledge appends.", ConstLabels: cl}),
		held:              prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_queue_commits_held_total", Help: "Commits held for the commit delay (-commit-delay) to gather the appends arriving meanwhile.", ConstLabels: cl}),
		fsyncSeconds:      prometheus.NewHistogram(prometheus.HistogramOpts{Name: "drover_queue_fsync_duration_seconds", Help: "Duration of one group commit's write and fsync.", ConstLabels: cl, Buckets: latency}),
		appendSeconds:     prometheus.NewHistogram(prometheus.HistogramOpts{Name: "drover_queue_append_duration_seconds", Help: "Time from Append to its acknowledgement.", ConstLabels: cl, Buckets: latency}),
		rejected:          prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drover_queue_rejected_appends_total", Help: "Appends refused, by reason (full, storage, too_large, closed).", ConstLabels: cl}, []string{"reason"}),
		removed:           prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_queue_removed_entries_total", Help: "Entries removed after downstream acknowledgement.", ConstLabels: cl}),
		redelivered:       prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_queue_redelivered_entries_total", Help: "Entries handed to the consumer again after Nack or Rewind.", ConstLabels: cl}),
		quarantined:       prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_queue_quarantined_segments_total", Help: "Damaged segments copied into quarantine/ at open.", ConstLabels: cl}),
		repairs:           prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drover_queue_repairs_total", Help: "Repairs made at open, by kind (torn_tail, quarantine, excess_markers, consumed_segment, missing_segment, padding).", ConstLabels: cl}, []string{"kind"}),
		storageErrors:     prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_queue_storage_errors_total", Help: "Write, sync or remove errors from the disk.", ConstLabels: cl}),
		maxBytes:          prometheus.NewGauge(prometheus.GaugeOpts{Name: "drover_queue_max_bytes", Help: "Bound on the entry bytes held (set, or sized from the volume); -1 when unbounded.", ConstLabels: cl}),
		fillRatio:         prometheus.NewGauge(prometheus.GaugeOpts{Name: "drover_queue_fill_ratio", Help: "drover_queue_depth_bytes / drover_queue_max_bytes: 1 is full (appends refused: back-pressure); 0 when unbounded.", ConstLabels: cl}),
		volumeFree:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "drover_queue_volume_free_bytes", Help: "Bytes available on the filesystem holding the queue (statfs, refreshed every 10 s).", ConstLabels: cl}),
		volumeSize:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "drover_queue_volume_size_bytes", Help: "Size of the filesystem holding the queue (statfs).", ConstLabels: cl}),
		cursorLagEntries:  prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "drover_queue_cursor_lag_entries", Help: "Entries committed that the cursor has not passed (acked) yet.", ConstLabels: cl}, []string{"cursor"}),
		cursorLagBytes:    prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "drover_queue_cursor_lag_bytes", Help: "Entry bytes committed that the cursor has not passed (acked) yet.", ConstLabels: cl}, []string{"cursor"}),
		cursorFill:        prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "drover_queue_cursor_fill_ratio", Help: "drover_queue_cursor_lag_bytes / the cursor's bound: 1 is full; 0 when unbounded.", ConstLabels: cl}, []string{"cursor"}),
		cursorInflight:    prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "drover_queue_cursor_inflight_entries", Help: "Entries read through the cursor and not yet acknowledged.", ConstLabels: cl}, []string{"cursor"}),
		cursorRedelivered: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drover_queue_cursor_redelivered_entries_total", Help: "Entries handed to the cursor's reader again after Nack or Rewind.", ConstLabels: cl}, []string{"cursor"}),
	}
	if reg == nil {
		return m
	}
	register := func(c prometheus.Collector) prometheus.Collector {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return are.ExistingCollector
			}
		}
		return c
	}
	m.depthEntries = register(m.depthEntries).(prometheus.Gauge)
	m.depthBytes = register(m.depthBytes).(prometheus.Gauge)
	m.inflight = register(m.inflight).(prometheus.Gauge)
	m.degraded = register(m.degraded).(prometheus.Gauge)
	m.appendedTotal = register(m.appendedTotal).(prometheus.Counter)
	m.appendedBytes = register(m.appendedBytes).(prometheus.Counter)
	m.records = register(m.records).(prometheus.Counter)
	m.fsyncs = register(m.fsyncs).(prometheus.Counter)
	m.held = register(m.held).(prometheus.Counter)
	m.fsyncSeconds = register(m.fsyncSeconds).(prometheus.Histogram)
	m.appendSeconds = register(m.appendSeconds).(prometheus.Histogram)
	m.rejected = register(m.rejected).(*prometheus.CounterVec)
	m.removed = register(m.removed).(prometheus.Counter)
	m.redelivered = register(m.redelivered).(prometheus.Counter)
	m.quarantined = register(m.quarantined).(prometheus.Counter)
	m.repairs = register(m.repairs).(*prometheus.CounterVec)
	m.storageErrors = register(m.storageErrors).(prometheus.Counter)
	m.maxBytes = register(m.maxBytes).(prometheus.Gauge)
	m.fillRatio = register(m.fillRatio).(prometheus.Gauge)
	m.volumeFree = register(m.volumeFree).(prometheus.Gauge)
	m.volumeSize = register(m.volumeSize).(prometheus.Gauge)
	m.cursorLagEntries = register(m.cursorLagEntries).(*prometheus.GaugeVec)
	m.cursorLagBytes = register(m.cursorLagBytes).(*prometheus.GaugeVec)
	m.cursorFill = register(m.cursorFill).(*prometheus.GaugeVec)
	m.cursorInflight = register(m.cursorInflight).(*prometheus.GaugeVec)
	m.cursorRedelivered = register(m.cursorRedelivered).(*prometheus.CounterVec)
	return m
}
