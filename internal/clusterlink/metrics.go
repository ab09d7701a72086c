package clusterlink

import (
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are shared by every Security of a process that registers with the
// same registerer (drover all runs four components on one): the first
// registers them, the others use what is registered.
type metrics struct {
	handshakes *prometheus.CounterVec
	refused    *prometheus.CounterVec
	insecure   *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	return &metrics{
		handshakes: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_link_handshakes_total",
			Help: "Connections of a cluster link that completed their handshake (TLS, when links are secured, and ZMTP), by link (ingest, store, live) and side (server: accepted; client: dialled).",
		}, []string{"link", "side"})),
		refused: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_link_refused_total",
			Help: "Connections of a cluster link refused or dropped, by link, side and reason: not_tls, no_certificate, unknown_authority (another cluster key), wrong_role, expired, peer_refused (the peer refused ours), not_zmtp, protocol, too_large, timeout (handshake not done in time), too_many (handshakes at once), closed, other.",
		}, []string{"link", "side", "reason"})),
		insecure: register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "drover_link_insecure",
			Help: "1 when the component runs its cluster links unauthenticated and unencrypted (-insecure-links), else 0. Alert on 1 outside development.",
		}, []string{"role"})),
	}
}

// register registers c, or returns the collector already registered under
// its name. Give every component of a process the same registerer, not one
// wrapped with labels: the same name with other labels does not register
// (and is then not exported).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if reg == nil {
		return c
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
	}
	return c
}

// Rate of refusal log lines: one per source, link and reason per window, so that a
// peer retrying every 250 ms with the wrong key (or a scanner) does not
// flood the log; the metric counts every one.
const (
	refusalLogWindow  = 10 * time.Minute
	refusalLogSources = 4096
)

// refusalLog remembers when it last logged a refusal from each source.
type refusalLog struct {
	mu   sync.Mutex
	last map[string]time.Time
	now  func() time.Time
}

func newRefusalLog() *refusalLog {
	return &refusalLog{last: map[string]time.Time{}, now: time.Now}
}

// allow reports whether a refusal from source may be logged now, and how
// many sources are remembered.
func (rl *refusalLog) allow(source string) bool {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	now := rl.now()
	if t, ok := rl.last[source]; ok && now.Sub(t) < refusalLogWindow {
		return false
	}
	if len(rl.last) >= refusalLogSources {
		for s, t := range rl.last {
			if now.Sub(t) >= refusalLogWindow {
				delete(rl.last, s)
			}
		}
		if len(rl.last) >= refusalLogSources {
			return false // a flood of sources: the metric still counts them
		}
	}
	rl.last[source] = now
	return true
}

// logRefusal logs one refusal, at most once per source, link and reason per
// window.
func (s *Security) logRefusal(link Link, side, source, reason string, err error) {
	if !s.refusals.allow(link.Name + " " + side + " " + source + " " + reason) {
		return
	}
	msg := "cluster link: connection refused"
	if side == sideClient {
		msg = "cluster link: cannot connect to the " + string(link.Server) + ": handshake refused"
	}
	s.log.Warn(msg, "link", link.Name, "side", side, "peer", source, "reason", reason, "err", err,
		"hint", hint(reason, side), "next_log_for_this_peer_after", refusalLogWindow)
}

// hint says what an operator should check for a reason.
func hint(reason, side string) string {
	switch reason {
	case "unknown_authority":
		return "the two processes do not share a cluster key: compare the fingerprints each logs at start (-cluster-key-file)"
	case "peer_refused":
		if side == sideServer {
			return "the connecting process refused this process's certificate: it does not hold this cluster key (compare the fingerprints each logs at start)"
		}
		return "the peer refused this process's certificate: they do not share a cluster key (compare the fingerprints each logs at start), or this endpoint is not for this role (the peer's log says which)"
	case "not_tls", "not_zmtp":
		return "the peer speaks plain ZeroMQ (-insecure-links, or not drover) or not ZeroMQ at all"
	case "no_certificate":
		return "the peer offered no certificate: not a drover process with a cluster key"
	case "wrong_role":
		return "the peer's role does not fit this link: an endpoint given to the wrong flag?"
	case "expired":
		return "a certificate is out of its validity: check the clocks"
	case "timeout":
		return "the peer did not finish its handshake in time"
	case "too_many":
		return "too many handshakes at once: a connection storm or a flood"
	}
	return ""
}
