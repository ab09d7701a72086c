package forward

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Reasons a batch is sent again, the label of drover_forward_resent_batches_total.
const (
	reasonTimeout    = "timeout"
	reasonRouterDown = "router_down"
	reasonBusy       = "busy"
	reasonRejected   = "rejected"
)

type metrics struct {
	sentBatches   prometheus.Counter
	sentEntries   prometheus.Counter
	sentBytes     prometheus.Counter
	ackedBatches  prometheus.Counter
	ackedEntries  prometheus.Counter
	ackedBytes    prometheus.Counter
	lateAcks      prometheus.Counter
	resent        *prometheus.CounterVec
	ackLatency    prometheus.Histogram
	inflight      prometheus.Gauge
	waiting       prometheus.Gauge
	routersUp     prometheus.Gauge
	routerDown    prometheus.Counter
	badMessages   *prometheus.CounterVec
	queueReleased prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		sentBatches:  prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_forward_sent_batches_total", Help: "Batches sent to routers (first sends and resends)."}),
		sentEntries:  prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_forward_sent_entries_total", Help: "Queue entries sent to routers (first sends and resends)."}),
		sentBytes:    prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_forward_sent_bytes_total", Help: "Queue entry bytes sent to routers (first sends and resends)."}),
		ackedBatches: prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_forward_acked_batches_total", Help: "Batches acknowledged by a router (durable there)."}),
		ackedEntries: prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_forward_acked_entries_total", Help: "Queue entries acknowledged by a router."}),
		ackedBytes:   prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_forward_acked_bytes_total", Help: "Queue entry bytes acknowledged by a router."}),
		lateAcks:     prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_forward_late_acks_total", Help: "Acks that arrived after their batch was given up (timeout, failover) and still counted."}),
		resent: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drover_forward_resent_batches_total",
			Help: "Batches given back to the queue to be sent again, by reason (timeout, router_down, busy, rejected)."}, []string{"reason"}),
		ackLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "drover_forward_ack_latency_seconds",
			Help:    "Time from sending a batch to its router's ack (the router's fsync included).",
			Buckets: []float64{.0002, .0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}}),
		inflight:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "drover_forward_inflight_batches", Help: "Queue batches sent and not yet acknowledged by a router."}),
		waiting:       prometheus.NewGauge(prometheus.GaugeOpts{Name: "drover_forward_waiting_batches", Help: "Queue batches read and waiting for a router that is up and not busy."}),
		routersUp:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "drover_forward_routers_up", Help: "Routers answering heartbeats."}),
		routerDown:    prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_forward_router_down_total", Help: "Times a router was seen going down (heartbeats missed, send failed): each is a failover."}),
		badMessages:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drover_forward_bad_messages_total", Help: "Messages from routers dropped, by reason (version, type, malformed)."}, []string{"reason"}),
		queueReleased: prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_forward_removed_entries_total", Help: "Queue entries acked to the local queue (removed from it) because a router has them."}),
	}
	for _, r := range []string{reasonTimeout, reasonRouterDown, reasonBusy, reasonRejected} {
		m.resent.WithLabelValues(r)
	}
	if reg == nil {
		return m
	}
	register(reg, &m.sentBatches, &m.sentEntries, &m.sentBytes, &m.ackedBatches, &m.ackedEntries,
		&m.ackedBytes, &m.lateAcks, &m.queueReleased, &m.routerDown)
	register(reg, &m.inflight, &m.waiting, &m.routersUp)
	register(reg, &m.resent, &m.badMessages)
	register(reg, &m.ackLatency)
	return m
}

// register registers each collector with reg; when an identical one is
// there already (two drainers in one process, tests), it uses that one.
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
