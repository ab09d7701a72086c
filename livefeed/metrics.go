package livefeed

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Reasons of drover_livefeed_refusals_total and
// drover_livefeed_disconnects_total.
const (
	reasonNoToken      = "no_token"        // 401
	reasonBadToken     = "bad_token"       // 401
	reasonNotWebSocket = "not_websocket"   // 400
	reasonBadUpgrade   = "bad_upgrade"     // 4xx written by the upgrader
	reasonMaxClients   = "max_clients"     // 503
	reasonShutdown     = "shutting_down"   // 503 before, 1001 after the upgrade
	reasonSlow         = "slow"            // 4002: backlog over the limit too long
	reasonWriteTimeout = "write_timeout"   // a write took longer than WriteTimeout
	reasonIdle         = "idle"            // 4001
	reasonRevoked      = "revoked"         // 4003
	reasonExpired      = "expired"         // 401 before, 4004 after the upgrade
	reasonAuthLimit    = "auth_rate_limit" // 429: too many failed authentications
	reasonClientClosed = "client_closed"   // the client closed or vanished
	reasonWriteError   = "write_error"     // a write failed
	reasonTooBig       = "message_too_big" // 1009
)

// metrics is the livefeed's instrumentation, drover_livefeed_*.
type metrics struct {
	clients          prometheus.Gauge
	clientsAccepted  prometheus.Counter
	refusals         *prometheus.CounterVec
	disconnects      *prometheus.CounterVec
	slowDisconnects  prometheus.Counter
	subscriptions    prometheus.Gauge
	subscribes       *prometheus.CounterVec
	clientErrors     *prometheus.CounterVec
	routersConnected prometheus.Gauge
	batchesReceived  prometheus.Counter
	batchesMissed    prometheus.Counter
	messagesInvalid  prometheus.Counter
	updatesReceived  prometheus.Counter
	updatesStale     prometheus.Counter
	updatesRetired   prometheus.Counter
	vehiclesRetired  prometheus.Counter
	updatesInvalid   prometheus.Counter
	updatesSent      prometheus.Counter
	messagesSent     prometheus.Counter
	snapshotVehicles prometheus.Counter
	conflated        prometheus.Counter
	dropped          *prometheus.CounterVec
	vehicles         prometheus.Gauge
	vehiclesExpired  prometheus.Counter
	ingestDelay      prometheus.Histogram
	sendDelay        prometheus.Histogram
	reloads          *prometheus.CounterVec
	alertsReceived   prometheus.Counter
	alertsSent       prometheus.Counter
	alertsDropped    prometheus.Counter
	streams          prometheus.Gauge
	streamClients    prometheus.Gauge
	streamJoins      prometheus.Counter
	streamLeaves     *prometheus.CounterVec
	streamMessages   prometheus.Counter
	streamRoundsCut  prometheus.Counter
	streamDropped    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	delayBuckets := []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
	m := &metrics{
		clients: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "drover_livefeed_clients", Help: "Client WebSocket connections open now.",
		}),
		clientsAccepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_livefeed_clients_accepted_total", Help: "Client connections authenticated and upgraded.",
		}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_livefeed_refusals_total", Help: "Client connections refused before the upgrade, by reason.",
		}, []string{"reason"}),
		disconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_livefeed_disconnects_total", Help: "Client connections ended, by reason.",
		}, []string{"reason"}),
		slowDisconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_livefeed_slow_clients_disconnected_total",
			Help: "Clients disconnected for being too slow (backlog over the limit too long, or a write timing out).",
		}),
		subscriptions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "drover_livefeed_subscriptions", Help: "Clients with a subscription in force.",
		}),
		subscribes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_livefeed_subscribes_total", Help: "Subscribe messages, by result (ok, refused).",
		}, []string{"result"}),
		clientErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_livefeed_client_errors_total", Help: "Error messages sent to clients, by code.",
		}, []string{"code"}),
		routersConnected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "drover_livefeed_routers_connected", Help: "Router live. endpoints with a live connection.",
		}),
		batchesReceived: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_livefeed_batches_received_total", Help: "Publish batches received on the live. lane.",
		}),
		batchesMissed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_livefeed_batches_missed_total",
			Help: "Publish batches lost on the way from the routers (gaps in a router's batch sequence).",
		}),
		messagesInvalid: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_livefeed_messages_invalid_total", Help: "live. lane messages that could not be decoded, dropped.",
		}),
		updatesReceived: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_livefeed_updates_received_total", Help: "Records received from the routers.",
		}),
		updatesStale: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_livefeed_updates_stale_total",
			Help: "Records ignored because the vehicle's state is newer (out of order) or the same (duplicate).",
		}),
		updatesRetired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_livefeed_updates_retired_total",
			Help: "Records not shown because the registry says their device is decommissioned or removed (-registry-api).",
		}),
		vehiclesRetired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_livefeed_vehicles_retired_total",
			Help: "Vehicles taken off the map because their device was decommissioned or removed (-registry-api).",
		}),
		updatesInvalid: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_livefeed_updates_invalid_total", Help: "Records ignored as invalid (no device, no time, bad position).",
		}),
		updatesSent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_livefeed_updates_sent_total", Help: "Vehicle updates and removals written to clients (not counting snapshots).",
		}),
		messagesSent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_livefeed_messages_sent_total", Help: "WebSocket messages written to clients.",
		}),
		snapshotVehicles: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_livefeed_snapshot_vehicles_total", Help: "Vehicles sent in snapshots.",
		}),
		conflated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_livefeed_updates_conflated_total",
			Help: "Updates replaced by a newer one of the same vehicle before being written to a client.",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_livefeed_updates_dropped_total",
			Help: "Updates never written to a client, by reason (client_closed, snapshot_limit).",
		}, []string{"reason"}),
		vehicles: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "drover_livefeed_vehicles", Help: "Vehicles tracked in memory.",
		}),
		vehiclesExpired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_livefeed_vehicles_expired_total", Help: "Vehicles forgotten after sending nothing for the vehicle TTL.",
		}),
		ingestDelay: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "drover_livefeed_ingest_delay_seconds",
			Help:    "From the frontend receiving a reading to the livefeed applying it (clocks of two hosts).",
			Buckets: delayBuckets,
		}),
		sendDelay: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "drover_livefeed_send_delay_seconds",
			Help:    "From applying the oldest update of a message to having written the message to its client, rate limits included.",
			Buckets: delayBuckets,
		}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_livefeed_clients_file_reloads_total", Help: "Clients file loads, by result (ok, error).",
		}, []string{"result"}),
		alertsReceived: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_livefeed_alerts_received_total", Help: "Alert events received from alert lanes.",
		}),
		alertsSent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_livefeed_alerts_sent_total", Help: "Alert messages written to clients.",
		}),
		alertsDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_livefeed_alerts_dropped_total", Help: "Alert messages dropped for a client that had 256 waiting (its oldest).",
		}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "drover_livefeed_streams", Help: "Shared streams now: groups of clients with the same filter fed the same messages.",
		}),
		streamClients: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "drover_livefeed_stream_clients", Help: "Clients fed from a shared stream now (the others are fed on their own).",
		}),
		streamJoins: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_livefeed_stream_joins_total", Help: "Clients that joined a shared stream, having caught up on their own.",
		}),
		streamLeaves: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_livefeed_stream_leaves_total",
			Help: "Clients that left a shared stream, by reason (behind: fell 4 MiB behind and went on on their own; resubscribe; closed).",
		}, []string{"reason"}),
		streamMessages: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_livefeed_stream_messages_total", Help: "Update messages built by shared streams (each written to every member).",
		}),
		streamRoundsCut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_livefeed_stream_rounds_cut_total",
			Help: "Stream messages after which the stream stopped waiting for its members that were keeping up to write it (they took longer than 50 ms) and took the next.",
		}),
		streamDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_livefeed_stream_messages_dropped_total",
			Help: "Shared messages a client that fell behind did not get: replaced by the latest state of their vehicles.",
		}),
	}
	for _, c := range []prometheus.Collector{
		m.streams, m.streamClients, m.streamJoins, m.streamLeaves, m.streamMessages, m.streamRoundsCut, m.streamDropped,
		m.clients, m.clientsAccepted, m.refusals, m.disconnects, m.slowDisconnects, m.subscriptions,
		m.subscribes, m.clientErrors, m.routersConnected, m.batchesReceived, m.batchesMissed,
		m.messagesInvalid, m.updatesReceived, m.updatesStale, m.updatesRetired, m.vehiclesRetired, m.updatesInvalid, m.updatesSent,
		m.messagesSent, m.snapshotVehicles, m.conflated, m.dropped, m.vehicles, m.vehiclesExpired,
		m.ingestDelay, m.sendDelay, m.reloads, m.alertsReceived, m.alertsSent, m.alertsDropped,
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("livefeed: register metrics: %w", err)
		}
	}
	return m, nil
}
