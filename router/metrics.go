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

	fanoutEntries    prometheus.Counter
	fanoutRecords    prometheus.Counter
	fanoutBad        prometheus.Counter
	fanoutBlocked    prometheus.Gauge
	enrichMisses     prometheus.Counter
	livePublished    prometheus.Counter
	liveDropped      prometheus.Counter
	liveSent         *prometheus.CounterVec
	liveSubDropped   *prometheus.CounterVec
	liveSubscribers  prometheus.Gauge
	liveDisconnects  *prometheus.CounterVec
	subscribers      prometheus.Gauge
	subsRegistered   prometheus.Counter
	subsDropped      *prometheus.CounterVec
	subSent          *prometheus.CounterVec
	subAcked         *prometheus.CounterVec
	subBusy          *prometheus.CounterVec
	subResent        *prometheus.CounterVec
	subConnected     *prometheus.GaugeVec
	subEventsDropped prometheus.Counter
	fanoutRebuilt    prometheus.Counter
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
			Help: "Messages dropped unanswered, by reason (version, type, malformed; subscribers: a subscribe refused past the cap of durable subscribers)."}, []string{"reason"}),
		batchRecords: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "drover_router_batch_records", Help: "Records per batch received.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 10)}),
		appendSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "drover_router_append_duration_seconds", Help: "Time to append a batch to the router queue durably (fsync, shared by group commit).",
			Buckets: []float64{.0001, .00025, .0005, .001, .002, .005, .01, .025, .05, .1, .25, 1}}),
		pending:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "drover_router_pending_batches", Help: "Batches being stored (append not yet durable)."}),
		dedupSenders:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "drover_router_dedup_senders", Help: "Frontends whose stored sequences the router remembers."}),
		dedupForgotten: prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_router_dedup_forgotten_intervals_total", Help: "Intervals of stored sequences forgotten to stay within -dedup-intervals (their resends would be stored again)."}),
		journalErrors:  prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_router_dedup_journal_errors_total", Help: "Failed writes or syncs of the dedup journal."}),
	}
	m.fanoutEntries = prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_router_fanout_entries_total", Help: "Main-queue entries stored in the log that every durable subscriber reads through its cursor."})
	m.fanoutRecords = prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_router_fanout_records_total", Help: "Records in the entries of drover_router_fanout_entries_total."})
	m.fanoutBad = prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_router_fanout_bad_entries_total", Help: "Main-queue entries that did not decode and were skipped (a bug or a damaged disk)."})
	m.fanoutBlocked = prometheus.NewGauge(prometheus.GaugeOpts{Name: "drover_router_fanout_blocked", Help: "1 while the durable lane holds the log: no durable subscriber is known, or the registry is not in force yet."})
	m.enrichMisses = prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_router_enrichment_misses_total", Help: "Records of devices unknown to the registry (published with an empty enrichment)."})
	m.livePublished = prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_router_live_published_total", Help: "Batches offered to the live lane (each is queued for every live subscriber whose subscriptions match)."})
	m.liveDropped = prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_router_live_dropped_total", Help: "Batches the live lane dropped for a subscriber, all subscribers summed: its buffer (-live-buffer, -live-buffer-bytes) was full, or it went away with batches queued."})
	m.liveSent = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drover_router_live_sent_total", Help: "Batches written to a live subscriber (label: its ZeroMQ identity, else its host)."}, []string{"subscriber"})
	m.liveSubDropped = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drover_router_live_subscriber_dropped_total", Help: "Batches dropped for one live subscriber (its buffer full: it falls behind alone)."}, []string{"subscriber"})
	m.liveSubscribers = prometheus.NewGauge(prometheus.GaugeOpts{Name: "drover_router_live_subscribers", Help: "Live subscribers connected."})
	m.liveDisconnects = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drover_router_live_disconnects_total", Help: "Live subscribers disconnected, by reason: stalled (took nothing for 10 s), closed, stopping, too_many (refused past 256)."}, []string{"reason"})
	m.subscribers = prometheus.NewGauge(prometheus.GaugeOpts{Name: "drover_router_subscribers", Help: "Durable subscribers the router keeps a queue for."})
	m.subsRegistered = prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_router_subscribers_registered_total", Help: "Durable subscribers registered on their first subscribe (not in -subscribers, not persisted)."})
	m.subsDropped = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drover_router_subscribers_dropped_total", Help: "Durable subscribers dropped (queue deleted) after -subscriber-retention without a subscribe."}, []string{"subscriber"})
	m.subSent = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drover_router_subscriber_sent_batches_total", Help: "Store-lane batches sent to a subscriber for the first time."}, []string{"subscriber"})
	m.subAcked = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drover_router_subscriber_acked_batches_total", Help: "Store-lane batches acked by a subscriber."}, []string{"subscriber"})
	m.subBusy = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drover_router_subscriber_busy_total", Help: "Busy answers from a subscriber (its own queue full)."}, []string{"subscriber"})
	m.subResent = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drover_router_subscriber_resent_batches_total", Help: "Store-lane batches sent again, by reason (timeout, busy, reconnect)."}, []string{"subscriber", "reason"})
	m.subConnected = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "drover_router_subscriber_connected", Help: "1 while a subscriber subscribes regularly, else 0."}, []string{"subscriber"})
	m.fanoutRebuilt = prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_router_fanout_rebuilt_entries_total", Help: "Main-queue entries a subscriber's sender decoded, enriched and serialized itself because what was built at receipt was no longer kept (the subscriber far behind, a backlog from before a restart, the live lane not open)."})
	m.subEventsDropped = prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_router_subscriber_events_dropped_total", Help: "Subscribe/ack/busy messages dropped because a subscriber's sender was behind (acks lost this way cause resends)."})
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
	register(reg, &m.fanoutEntries, &m.fanoutRecords, &m.fanoutBad, &m.enrichMisses, &m.livePublished, &m.liveDropped, &m.subsRegistered, &m.subEventsDropped, &m.fanoutRebuilt)
	register(reg, &m.fanoutBlocked, &m.subscribers, &m.liveSubscribers)
	register(reg, &m.subsDropped, &m.subSent, &m.subAcked, &m.subBusy, &m.subResent, &m.liveSent, &m.liveSubDropped, &m.liveDisconnects)
	register(reg, &m.subConnected)
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
