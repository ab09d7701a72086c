package tlsserve

import (
	"fmt"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Handshake results, the values of <namespace>_tls_handshakes_total{result}.
const (
	resultFull    = "full"    // a full handshake: certificate signature, key exchange
	resultResumed = "resumed" // a session ticket was accepted
	resultFailed  = "failed"  // the handshake failed (timeout, bad client, refused certificate)
)

// Reasons a connection is closed before its handshake, the values of
// <namespace>_tls_handshake_refusals_total{reason}.
const (
	refusedWait = "wait" // it waited longer than half the handshake timeout
	refusedGone = "gone" // its client closed it while it waited
)

// metrics is what a TLS server counts. Registered once per Server; a
// Listener adds to the same.
type metrics struct {
	reloads    *prometheus.CounterVec
	certExpiry prometheus.Gauge

	handshakes *prometheus.CounterVec
	refused    *prometheus.CounterVec
	inProgress prometheus.Gauge
	waiting    prometheus.Gauge
	// acceptQueue reads the kernel's accept queue of the listener serving
	// (nil: none), for the _tls_accept_queue gauge.
	acceptQueue atomic.Pointer[func() int]
	rate        prometheus.Gauge
	seconds     prometheus.Histogram
}

func newMetrics(ns string, reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: ns + "_tls_reloads_total",
			Help: "Loads of the TLS certificate, key, client CAs and ticket keys (at start, on SIGHUP, on change), by result (ok, error: the previous ones stay in force).",
		}, []string{"result"}),
		certExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: ns + "_tls_certificate_expiry_timestamp_seconds",
			Help: "When the TLS certificate in force expires (Unix time): alert well before it.",
		}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: ns + "_tls_handshakes_total",
			Help: "TLS handshakes, by result: full, resumed (a session ticket was accepted), failed.",
		}, []string{"result"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: ns + "_tls_handshake_refusals_total",
			Help: "Connections closed before their TLS handshake, by reason: wait (waited too long for a handshake slot), gone (the client closed it while it waited). A full backlog closes none: new connections wait in the kernel's accept queue.",
		}, []string{"reason"}),
		inProgress: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: ns + "_tls_handshakes_in_progress",
			Help: "TLS handshakes in progress now (bounded by -tls-max-handshakes).",
		}),
		waiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: ns + "_tls_handshakes_waiting",
			Help: "Accepted connections waiting for a TLS handshake slot now (bounded by -tls-handshake-backlog).",
		}),
		rate: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: ns + "_tls_handshake_rate",
			Help: "The TLS handshake budget in force, in full handshakes per second (-tls-handshake-rate, lowered by admission control while the CPU is short); 0: no limit.",
		}),
		seconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    ns + "_tls_handshake_seconds",
			Help:    "Time from a connection's turn to the end of its TLS handshake (the client's round trips included).",
			Buckets: []float64{.0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
	}
	queued := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: ns + "_tls_accept_queue",
		Help: "Connections the kernel holds in the listening socket's accept queue, not yet accepted: they wait there while the handshake backlog is full (Linux; 0 elsewhere).",
	}, func() float64 {
		if f := m.acceptQueue.Load(); f != nil {
			return float64((*f)())
		}
		return 0
	})
	for _, c := range []prometheus.Collector{m.reloads, m.certExpiry, m.handshakes, m.refused, m.inProgress, m.waiting, m.rate, m.seconds, queued} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register TLS metrics: %w", err)
		}
	}
	for _, r := range []string{resultFull, resultResumed, resultFailed} {
		m.handshakes.WithLabelValues(r)
	}
	for _, r := range []string{refusedWait, refusedGone} {
		m.refused.WithLabelValues(r)
	}
	return m, nil
}
