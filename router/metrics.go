package router

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	batches        prometheus.Counter
	entries        prometheus.Counter
	records        prometheus.Counter
	stored         prometheus.Counter
	storedBytes    prometheus.Counter
	duplicates     prometheus.Counter
	busy           *prometheus.CounterVec
	rejected       *prometheus.CounterVec
	badMessages    *prometheus.CounterVec
	batchRecords   prometheus.Histogram
	appendSeconds  prometheus.Histogram
	pending        prometheus.Gauge
	dedupSenders   prometheus.Gauge
	dedupForgotten prometheus.Counter
	journalErrors  prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		batches:     prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_router_batches_received_total", Help: "Batches received from frontends, duplicates included."}),
		entries:     prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_router_entries_received_total", Help: "Frontend queue entries received, duplicates included."}),
		records:     prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_router_records_received_total", Help: "Records received, duplicates included."}),
		stored:      prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_router_entries_stored_total", Help: "Frontend queue entries stored durably (not duplicates)."}),
		storedBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_router_stored_bytes_total", Help: "Bytes appended to the router queue."}),
		duplicates:  prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_router_duplicate_entries_total", Help: "Entries received again that were stored already (or were being stored) and were not stored twice."}),
		busy: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drover_router_busy_refusals_total",
			Help: "Batches answered busy (back-pressure), by reason (queue_full, storage, overloaded, stopping)."}, []string{"reason"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drover_router_rejected_batches_total",
			Help: "Batches rejected as invalid, by reason (malformed, too_large)."}, []string{"reason"}),
		badMessages: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drover_router_bad_messages_total",
			Help: "Messages dropped unanswered, by reason (version, type, malformed)."}, []string{"reason"}),
		batchRecords: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "drover_router_batch_records", Help: "Records per batch received.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 10)}),
		appendSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "drover_router_append_duration_seconds", Help: "Time to append a batch to the router queue durably (fsync, shared by group commit).",
			Buckets: []float64{.0001, .00025, .0005, .001, .002, .005, .01, .025, .05, .1, .25, 1}}),
		pending:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "drover_router_pending_batches", Help: "Batches being stored (append not yet durable)."}),
		dedupSenders:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "drover_router_dedup_senders", Help: "Frontends whose stored sequences the router remembers."}),
		dedupForgotten: prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_router_dedup_forgotten_intervals_total", Help: "Intervals of stored sequences forgotten to stay within -dedup-intervals (their resends would be stored again)."}),
		journalErrors:  prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_router_dedup_journal_errors_total", Help: "Failed writes or syncs of the dedup journal."}),
	}
	for _, r := range []string{"queue_full", "storage", "overloaded", "stopping"} {
		m.busy.WithLabelValues(r)
	}
	if reg == nil {
		return m
	}
	register(reg, &m.batches, &m.entries, &m.records, &m.stored, &m.storedBytes, &m.duplicates, &m.dedupForgotten, &m.journalErrors)
	register(reg, &m.busy, &m.rejected, &m.badMessages)
	register(reg, &m.batchRecords, &m.appendSeconds)
	register(reg, &m.pending, &m.dedupSenders)
	return m
}

// register registers each collector with reg; when an identical one is
// there already (two routers in one process, tests), it uses that one.
func register[C prometheus.Collector](reg prometheus.Registerer, cs ...*C) {
	for _, c := range cs {
		if err := reg.Register(*c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				if existing, ok := are.ExistingCollector.(C); ok {
					*c = existing
				}
			}
		}
	}
}
