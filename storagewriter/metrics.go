package storagewriter

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the writer's own metrics (drover_writer_*). Its queue adds
// drover_queue_*{queue="writer-NAME"} (depth: the backlog), its sink its
// own.
type metrics struct {
	batchesReceived *prometheus.CounterVec // by router
	entriesReceived prometheus.Counter
	recordsReceived prometheus.Counter
	duplicates      prometheus.Counter
	appended        prometheus.Counter
	busy            *prometheus.CounterVec // by reason
	badMessages     *prometheus.CounterVec // by reason
	routersUp       prometheus.Gauge
	recordsWritten  prometheus.Counter
	sinkWrites      prometheus.Counter
	sinkErrors      *prometheus.CounterVec // by kind
	sinkDown        prometheus.Gauge
	deadLettered    prometheus.Counter
	undecodable     prometheus.Counter
	// The dead-letter store.
	deadLetteredBytes prometheus.Counter
	dlFiles           prometheus.Gauge
	dlBytes           prometheus.Gauge
	dlDroppedFiles    prometheus.Counter
	dlDroppedRecords  prometheus.Counter
	dlDroppedBytes    prometheus.Counter
	writeSeconds      prometheus.Histogram
	writeRecords      prometheus.Histogram
	backlogAge        prometheus.Gauge
}

func newMetrics() *metrics {
	return &metrics{
		batchesReceived: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drover_writer_batches_received_total", Help: "Batch messages received from routers, by router ID."}, []string{"router"}),
		entriesReceived: prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_writer_entries_received_total", Help: "Router queue entries (PublishBatch) received, duplicates included."}),
		recordsReceived: prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_writer_records_received_total", Help: "Records received from routers, duplicates included."}),
		duplicates:      prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_writer_duplicate_entries_total", Help: "Entries received again after they were appended (resends), dropped."}),
		appended:        prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_writer_appended_entries_total", Help: "Entries appended (fsynced) to the writer's queue."}),
		busy:            prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drover_writer_busy_total", Help: "Batches answered busy (not stored; the router resends), by reason (full; over_bound: an entry larger than the whole queue bound; storage, appenders, closed, error)."}, []string{"reason"}),
		badMessages:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drover_writer_bad_messages_total", Help: "Messages from routers dropped as malformed or unexpected, by reason."}, []string{"reason"}),
		routersUp:       prometheus.NewGauge(prometheus.GaugeOpts{Name: "drover_writer_routers_up", Help: "Routers that answered the last heartbeats."}),
		recordsWritten:  prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_writer_records_written_total", Help: "Records the sink confirmed durable."}),
		sinkWrites:      prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_writer_sink_writes_total", Help: "Successful sink writes."}),
		sinkErrors:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drover_writer_sink_errors_total", Help: "Failed sink writes, by kind: transient (retried with backoff), permanent (bisected, refused records dead-lettered), dead_letter (the dead-letter file could not be written)."}, []string{"kind"}),
		sinkDown:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "drover_writer_sink_down", Help: "1 while the sink fails transiently (an outage: the queue grows), else 0."}),
		deadLettered:    prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_writer_dead_lettered_records_total", Help: "Records the sink refused for good, written to the dead-letter file."}),
		undecodable:     prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_writer_undecodable_entries_total", Help: "Queue entries that are not a PublishBatch, written to the dead-letter file."}),

		deadLetteredBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_writer_dead_lettered_bytes_total", Help: "Bytes appended (and fsynced) to the dead-letter files."}),
		dlFiles:           prometheus.NewGauge(prometheus.GaugeOpts{Name: "drover_writer_dead_letter_files", Help: "Dead-letter files held in the dead-letter folder (replay or remove them: drover storage-writer replay)."}),
		dlBytes:           prometheus.NewGauge(prometheus.GaugeOpts{Name: "drover_writer_dead_letter_bytes", Help: "Bytes of the dead-letter files held."}),
		dlDroppedFiles:    prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_writer_dead_letter_dropped_files_total", Help: "Dead-letter files removed because -dead-letter-max-bytes or -dead-letter-max-age said so."}),
		dlDroppedRecords:  prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_writer_dead_letter_dropped_records_total", Help: "Dead letters (lines) in the files removed past a bound: records lost for good."}),
		dlDroppedBytes:    prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_writer_dead_letter_dropped_bytes_total", Help: "Bytes of the dead-letter files removed past a bound."}),
		writeSeconds:      prometheus.NewHistogram(prometheus.HistogramOpts{Name: "drover_writer_sink_write_duration_seconds", Help: "Duration of one sink write attempt.", Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12)}),
		writeRecords:      prometheus.NewHistogram(prometheus.HistogramOpts{Name: "drover_writer_sink_write_records", Help: "Records per successful sink write (grows while a backlog drains).", Buckets: prometheus.ExponentialBuckets(1, 4, 9)}),
		backlogAge:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "drover_writer_backlog_age_seconds", Help: "Seconds since the frontend received the oldest record the writer is writing and has not stored yet; 0 when caught up."}),
	}
}

func (m *metrics) register(reg prometheus.Registerer) error {
	var errs []error
	for _, c := range []prometheus.Collector{
		m.batchesReceived, m.entriesReceived, m.recordsReceived, m.duplicates, m.appended, m.busy,
		m.badMessages, m.routersUp, m.recordsWritten, m.sinkWrites, m.sinkErrors, m.sinkDown,
		m.deadLettered, m.undecodable, m.writeSeconds, m.writeRecords, m.backlogAge,
		m.deadLetteredBytes, m.dlFiles, m.dlBytes, m.dlDroppedFiles, m.dlDroppedRecords, m.dlDroppedBytes,
	} {
		if err := reg.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("storage-writer metrics: %w", err)
	}
	return nil
}
