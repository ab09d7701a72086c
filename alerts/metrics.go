package alerts

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the engine's, all under drover_alerts_.
type metrics struct {
	readings       prometheus.Counter
	lateReadings   prometheus.Counter
	duplicates     prometheus.Counter
	held           prometheus.Counter
	events         *prometheus.CounterVec // type, event
	devices        prometheus.Gauge
	routersUp      prometheus.Gauge
	badMessages    prometheus.Counter
	badEntries     prometheus.Counter
	oversized      prometheus.Counter
	busy           prometheus.Counter
	evalDelay      prometheus.Histogram
	snapshots      *prometheus.CounterVec // result
	snapshotSecs   prometheus.Histogram
	snapshotBytes  prometheus.Gauge
	rulesVersion   prometheus.Gauge
	compileSeconds prometheus.Gauge
	rulesLoads     *prometheus.CounterVec // source, result
	delivered      *prometheus.CounterVec // output
	failures       *prometheus.CounterVec // output
	outputLag      *prometheus.GaugeVec   // output: age of the oldest event not delivered, s
	deliverDelay   *prometheus.HistogramVec
	outboxDropped  prometheus.Counter
	liveSkippedOld prometheus.Counter
	lakeFiles      *prometheus.CounterVec // result: written, existed
	lane           laneMetrics
}

type laneMetrics struct {
	published, dropped prometheus.Counter
	sent, subDropped   *prometheus.CounterVec
	subscribers        prometheus.Gauge
	disconnects        *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_alerts_" + name, Help: help})
	}
	cv := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drover_alerts_" + name, Help: help}, labels)
	}
	g := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Name: "drover_alerts_" + name, Help: help})
	}
	m := &metrics{
		readings:     c("readings_total", "Readings evaluated (in order or in a late stretch)."),
		lateReadings: c("late_readings_total", "Readings evaluated in a late stretch (they filled a gap the evaluation had gone over)."),
		duplicates:   c("duplicate_readings_total", "Readings dropped as already evaluated (or too old to place)."),
		held:         c("held_readings_total", "Readings that waited for a gap in their device's seqs to fill."),
		events:       cv("events_total", "Alert events found, by type and event (raised, cleared, instant).", "type", "event"),
		devices:      g("devices", "Devices the evaluator keeps state for."),
		routersUp:    g("routers_up", "Routers whose store lane answered the last heartbeats."),
		badMessages:  c("bad_messages_total", "Messages from routers that could not be decoded."),
		badEntries:   c("bad_entries_total", "Queue entries that could not be decoded (skipped)."),
		oversized:    c("oversized_entries_total", "Router entries larger than a queue record (skipped)."),
		busy:         c("busy_total", "Batches answered busy (queue full or failing, or too many appends in flight)."),
		evalDelay: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "drover_alerts_evaluation_delay_seconds",
			Help: "From a reading's arrival at a frontend to its evaluation.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 16)}),
		snapshots:      cv("snapshots_total", "Snapshots of the evaluator's state, by result.", "result"),
		snapshotSecs:   prometheus.NewHistogram(prometheus.HistogramOpts{Name: "drover_alerts_snapshot_seconds", Help: "Time to write a snapshot (encode, write, fsync).", Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}),
		snapshotBytes:  g("snapshot_bytes", "Size of the last snapshot."),
		rulesVersion:   g("rules_version", "Version of the rule set in force."),
		compileSeconds: g("rules_compile_seconds", "How long the last rule set took to compile (the engine is not ready meanwhile)."),
		rulesLoads:     cv("rules_loads_total", "Rule sets loaded, by source (file, api) and result.", "source", "result"),
		delivered:      cv("delivered_total", "Alert events delivered, by output.", "output"),
		failures:       cv("delivery_failures_total", "Failed deliveries (retried), by output.", "output"),
		outputLag:      prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "drover_alerts_output_lag_seconds", Help: "Age of the oldest event an output has yet to deliver (0: none)."}, []string{"output"}),
		deliverDelay: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "drover_alerts_delivery_delay_seconds",
			Help: "From the arrival of the reading that caused an event to its delivery, by output.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 16)}, []string{"output"}),
		outboxDropped:  c("outbox_dropped_total", "Outbox records removed past -outbox-max-bytes before every output had them."),
		liveSkippedOld: c("lane_skipped_old_total", "Alert events not published live: older than -live-max-age."),
		lakeFiles: cv("lake_files_total", "Files of the lake's alerts table, by result: written, or existed (written by the same planned batch before a restart).",
			"result"),
		lane: laneMetrics{
			published:   c("lane_published_total", "Alert events offered to the alert lane."),
			dropped:     c("lane_dropped_total", "Alert events dropped for a slow lane subscriber, summed."),
			sent:        cv("lane_sent_total", "Alert events written to a lane subscriber.", "subscriber"),
			subDropped:  cv("lane_subscriber_dropped_total", "Alert events dropped for one lane subscriber.", "subscriber"),
			subscribers: g("lane_subscribers", "Alert lane subscribers connected."),
			disconnects: cv("lane_disconnects_total", "Alert lane subscribers disconnected, by reason.", "reason"),
		},
	}
	for _, col := range []prometheus.Collector{m.readings, m.lateReadings, m.duplicates, m.held, m.events, m.devices, m.routersUp,
		m.badMessages, m.badEntries, m.oversized, m.busy, m.evalDelay, m.snapshots, m.snapshotSecs, m.snapshotBytes, m.rulesVersion, m.compileSeconds,
		m.rulesLoads, m.delivered, m.failures, m.outputLag, m.deliverDelay, m.outboxDropped, m.liveSkippedOld, m.lakeFiles,
		m.lane.published, m.lane.dropped, m.lane.sent, m.lane.subDropped, m.lane.subscribers, m.lane.disconnects} {
		if err := reg.Register(col); err != nil {
			return nil, err
		}
	}
	return m, nil
}
