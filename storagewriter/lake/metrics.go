package lake

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// File kinds, the "kind" label of the file metrics.
const (
	kindBatch     = "batch"     // written by Write
	kindCompacted = "compacted" // written by compaction
)

type metrics struct {
	rows             prometheus.Counter
	files            *prometheus.CounterVec
	bytes            *prometheus.CounterVec
	writeSeconds     prometheus.Histogram
	writeErrors      *prometheus.CounterVec
	pendingRows      prometheus.Gauge
	compactions      prometheus.Counter
	compactErrors    prometheus.Counter
	compactSeconds   prometheus.Histogram
	filesRemoved     prometheus.Counter
	openPartitions   prometheus.Gauge
	tempFilesRemoved prometheus.Counter
}

// newMetrics makes the sink's metrics, unregistered.
func newMetrics() *metrics {
	slow := []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}
	m := &metrics{
		rows:             prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_lake_rows_written_total", Help: "Rows made durable in the lake by Write (compaction rewrites are not counted)."}),
		files:            prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drover_lake_files_written_total", Help: "Files published in the lake, by kind (batch: by Write; compacted: by compaction)."}, []string{"kind"}),
		bytes:            prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drover_lake_bytes_written_total", Help: "Bytes of the files published in the lake, by kind."}, []string{"kind"}),
		writeSeconds:     prometheus.NewHistogram(prometheus.HistogramOpts{Name: "drover_lake_write_duration_seconds", Help: "Duration of Write: convert, encode, fsync or upload, publish.", Buckets: slow}),
		writeErrors:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drover_lake_write_errors_total", Help: "Write calls that failed, by kind (transient: retried; permanent: records refused)."}, []string{"kind"}),
		pendingRows:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "drover_lake_pending_rows", Help: "Rows handed to Write and not yet durable (files being built or published)."}),
		compactions:      prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_lake_compactions_total", Help: "Partitions compacted: small files merged into bigger ones."}),
		compactErrors:    prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_lake_compaction_errors_total", Help: "Compactions that failed (retried at the next pass)."}),
		compactSeconds:   prometheus.NewHistogram(prometheus.HistogramOpts{Name: "drover_lake_compaction_duration_seconds", Help: "Duration of one partition's compaction.", Buckets: slow}),
		filesRemoved:     prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_lake_compacted_files_removed_total", Help: "Small files removed after compaction merged them."}),
		openPartitions:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "drover_lake_uncompacted_partitions", Help: "Partitions this writer has written to that compaction has not closed yet."}),
		tempFilesRemoved: prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_lake_temp_files_removed_total", Help: "Leftover files being built (from a crash) removed at start."}),
	}
	for _, k := range []string{kindBatch, kindCompacted} {
		m.files.WithLabelValues(k)
		m.bytes.WithLabelValues(k)
	}
	m.writeErrors.WithLabelValues("transient")
	m.writeErrors.WithLabelValues("permanent")
	return m
}

// register registers the metrics with reg (nothing if nil). Two sinks on one
// registry need it wrapped with a distinguishing label, as the storage
// writer does with "writer".
func (m *metrics) register(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{m.rows, m.files, m.bytes, m.writeSeconds, m.writeErrors, m.pendingRows,
		m.compactions, m.compactErrors, m.compactSeconds, m.filesRemoved, m.openPartitions, m.tempFilesRemoved} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register metrics: %w", err)
		}
	}
	return nil
}
