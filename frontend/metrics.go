package frontend

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Refusal reasons, the values of drover_frontend_refusals_total{reason}.
// Frame validation adds the telemetry.FrameErrorKind labels (malformed,
// range, time, sequence, ...).
const (
	reasonNoCredentials  = "no_credentials"  // 401: no device id or no token
	reasonBadDeviceID    = "bad_device_id"   // 400: the id breaks telemetry.ValidateDeviceID
	reasonBadFirmware    = "bad_firmware"    // 400: X-Drover-Firmware breaks telemetry.ValidateFirmwareVersion
	reasonUnknownDevice  = "unknown_device"  // 401, answered as bad_token
	reasonBadToken       = "bad_token"       // 401, answered as unknown_device
	reasonAuthRateLimit  = "auth_rate_limit" // 429: too many failed authentications
	reasonNotWebSocket   = "not_websocket"   // 400: a plain HTTP request
	reasonBadUpgrade     = "bad_upgrade"     // 4xx written by the upgrader
	reasonMaxConnections = "max_connections" // 503
	reasonShuttingDown   = "shutting_down"   // 503
	reasonFrameTooLarge  = "too_large"       // close 1009
	reasonRateLimit      = "rate_limit"      // close 1008
	reasonOverloaded     = "overloaded"      // close 1013: queue or disk full
	reasonInternal       = "internal"        // close 1011
)

// metrics is the frontend's own instrumentation; the queue registers its own
// (drover_queue_*{queue="frontend"}).
type metrics struct {
	connections         prometheus.Gauge
	connectionsAccepted prometheus.Counter
	connectionsRefused  prometheus.Counter
	handedToHTTP        prometheus.Counter
	pingsSent           prometheus.Counter
	pingsSkipped        prometheus.Counter
	connectionsClosed   *prometheus.CounterVec
	refusals            *prometheus.CounterVec
	framesReceived      prometheus.Counter
	framesStored        prometheus.Counter
	framesDuplicate     prometheus.Counter
	readingsReceived    prometheus.Counter
	readingsBacklog     prometheus.Counter
	readingsStored      prometheus.Counter
	readingsDuplicate   prometheus.Counter
	ackLatency          prometheus.Histogram
	ackWrites           prometheus.Counter
	devices             prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "drover_frontend_connections",
			Help: "Device WebSocket connections open now.",
		}),
		connectionsAccepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_frontend_connections_accepted_total",
			Help: "Device connections authenticated and upgraded to WebSocket.",
		}),
		connectionsRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_frontend_connections_refused_total",
			Help: "Device connections refused before the upgrade (401, 429, 503, 400); reasons in drover_frontend_refusals_total.",
		}),
		handedToHTTP: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_frontend_requests_handed_to_net_http_total",
			Help: "Connections the device listener's front door handed to net/http: not a WebSocket upgrade of the ingest path (firmware downloads, other paths), or a request head over 4 KiB. Upgrades are served without net/http's per-connection buffers.",
		}),
		pingsSent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_frontend_pings_sent_total",
			Help: "Keepalive pings written to devices: one per -ping-interval to a device that sent no data frame in it.",
		}),
		pingsSkipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_frontend_pings_skipped_total",
			Help: "Keepalive pings not written because the device had sent a data frame within -ping-interval: its frames prove the connection alive.",
		}),
		connectionsClosed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_frontend_connections_closed_total",
			Help: "Device connections closed, by the close code the server sent (none: the peer closed or vanished).",
		}, []string{"code"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_frontend_refusals_total",
			Help: "Refusals, by reason: HTTP refusals before the upgrade and WebSocket closes for bad input, limits and back-pressure.",
		}, []string{"reason"}),
		framesReceived: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_frontend_frames_received_total",
			Help: "Frames (WebSocket messages) received from devices, valid or not.",
		}),
		framesStored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_frontend_frames_stored_total",
			Help: "Frames appended to the queue (each one queue entry) and acked.",
		}),
		framesDuplicate: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_frontend_frames_duplicate_total",
			Help: "Frames whose readings were all acked before (resends): acked again, stored nothing.",
		}),
		readingsReceived: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_frontend_readings_received_total",
			Help: "Readings in valid frames.",
		}),
		readingsBacklog: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_frontend_readings_backlog_total",
			Help: "Readings received whose device time was older than -backlog-age (store-and-forward flushes).",
		}),
		readingsStored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_frontend_readings_stored_total",
			Help: "Readings appended to the queue and acked.",
		}),
		readingsDuplicate: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_frontend_readings_duplicate_total",
			Help: "Readings at or below the device's acked sequence: acked again, not stored again.",
		}),
		ackLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "drover_frontend_ack_latency_seconds",
			Help:    "Time from a frame's arrival to its ack written to the device (decode, fsync, write).",
			Buckets: []float64{.0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}),
		ackWrites: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_frontend_ack_writes_total",
			Help: "Writes that carried acks to a device: one per frame, or fewer when a device's frames waited back to back and their acks went out together (acks stay one per frame).",
		}),
		devices: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "drover_frontend_devices_tracked",
			Help: "Devices whose acked sequence and rate budget are held in memory (connected plus recently seen).",
		}),
	}
	for _, c := range []prometheus.Collector{
		m.connections, m.connectionsAccepted, m.connectionsRefused, m.handedToHTTP, m.pingsSent, m.pingsSkipped, m.connectionsClosed, m.refusals,
		m.framesReceived, m.framesStored, m.framesDuplicate,
		m.readingsReceived, m.readingsBacklog, m.readingsStored, m.readingsDuplicate,
		m.ackLatency, m.ackWrites, m.devices,
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register frontend metrics: %w", err)
		}
	}
	return m, nil
}
