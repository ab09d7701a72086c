package api

import (
	"fmt"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the api's Prometheus metrics.
type metrics struct {
	requests     *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	authFailures *prometheus.CounterVec
	importRows   *prometheus.CounterVec
	feedVersion  prometheus.Gauge
	followers    prometheus.Gauge
	presence     prometheus.Counter
	refused      *prometheus.CounterVec
	commands     *prometheus.CounterVec
	handoffs     *prometheus.CounterVec
	alertEvents  prometheus.Counter
	writeGroups  prometheus.Histogram
	groupRetries prometheus.Counter
	commitTime   prometheus.Histogram
	campaignDevs *prometheus.GaugeVec
	notifyEvents prometheus.Counter
	notifyLost   prometheus.Counter
	keyLookups   *prometheus.CounterVec
	keyEvictions *prometheus.CounterVec
	// pg is the open store's count of what it sent PostgreSQL (nil
	// before it opens, and on SQLite), which two counters read.
	pg atomic.Pointer[pgCounter]
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_api_requests_total", Help: "API requests answered, by route (method and pattern) and status code.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "drover_api_request_duration_seconds", Help: "Time to answer an API request, by route (long polls included).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"route"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_api_auth_failures_total",
			Help: "Failed API authentications, by reason (missing, malformed, unknown_key, bad_secret, revoked, expired, disabled, throttled).",
		}, []string{"reason"}),
		importRows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_api_import_rows_total", Help: "Device import rows, by result (imported, refused).",
		}, []string{"result"}),
		feedVersion: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "drover_api_feed_version", Help: "Last change version this replica has seen.",
		}),
		followers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "drover_api_feed_waiting_followers", Help: "Change feed long polls waiting now.",
		}),
		presence: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_api_presence_reports_total", Help: "Device presence records received from frontends.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_api_refused_total", Help: "Requests refused as bad input, by error code (bad_request, invalid, conflict, too_large, ...).",
		}, []string{"code"}),
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_api_commands_total",
			Help: "Command events, by what happened: created, sent (a delivery attempt), delivered, succeeded, failed, expired, cancelled, requeued (a frontend could not write it), refused_queue_full, ignored (a report that could not apply), pruned; and the progress devices reported: downloading, verifying, installing.",
		}, []string{"event"}),
		handoffs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_api_command_handoffs_total",
			Help: "Commands a create wrote sent to the frontend holding the device and handed to its poll in memory (docs/commands.md, \"Delivery\"), by what became of them: handed, taken (answered in a poll), stale (older than -command-resend or expired when the poll came: left to the resend).",
		}, []string{"result"}),
		alertEvents: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_api_alert_events_total", Help: "Alert events reported by alert engines and applied.",
		}),
		campaignDevs: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "drover_api_campaign_devices",
			Help: "Devices of the running and paused firmware campaigns (this replica's last look, each -command-poll), by state: pending, offered, downloading, verifying, installing, succeeded, failed, skipped.",
		}, []string{"state"}),
		notifyEvents: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_api_command_notified_events_total",
			Help: "Command events of other replicas received through PostgreSQL LISTEN/NOTIFY and handed to this replica's streams, waits and frontend polls.",
		}),
		notifyLost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_api_command_listen_lost_total",
			Help: "Times this replica was not listening for other replicas' command events (its connection failed): its event streams ended with overflow, waits polled.",
		}),
		keyLookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_api_key_cache_lookups_total",
			Help: "API key lookups of authentications, by result: hit (the key cache answered), miss (the database did), bypass (the cache was off: -key-cache-max-age 0, or on PostgreSQL while not listening for evictions).",
		}, []string{"result"}),
		keyEvictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_api_key_cache_evictions_total",
			Help: "API keys dropped from the key cache, by cause: revoke, operator_changed (updated, disabled or deleted), other_replica (notified by another replica), not_listening (emptied when the eviction channel was lost or listened again), max_age, size_limit.",
		}, []string{"cause"}),
		writeGroups: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "drover_api_write_group_size",
			Help:    "Writes (command creates, dispatch marks, report posts) committed together in one group-commit transaction; _count is those transactions (commits).",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256},
		}),
		commitTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "drover_api_db_commit_duration_seconds",
			Help:    "Time each write transaction's commit took: on SQLite the WAL's write and fsync (and a checkpoint when one falls due), on PostgreSQL the round trip with the server's WAL flush. Its tail is the disk's fsync tail, and on SQLite every write queued behind the one writer waits it too.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}),
		groupRetries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_api_write_group_retries_total",
			Help: "Group-commit transactions run again because PostgreSQL aborted them as a deadlock victim or a serialization failure (groups run concurrently there).",
		}),
	}
	pgRead := func(f func(*pgCounter) int64) func() float64 {
		return func() float64 {
			if c := m.pg.Load(); c != nil {
				return float64(f(c))
			}
			return 0
		}
	}
	dbTrips := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "drover_api_db_round_trips_total",
		Help: "Round trips to PostgreSQL: each statement sent alone (BEGIN and COMMIT included) and each batch of statements sent together; 0 on SQLite.",
	}, pgRead(func(c *pgCounter) int64 { return c.roundTrips.Load() }))
	dbStmts := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "drover_api_db_statements_total",
		Help: "Statements sent to PostgreSQL, alone or in a batch (BEGIN and COMMIT included); 0 on SQLite.",
	}, pgRead(func(c *pgCounter) int64 { return c.statements.Load() }))
	dbCommits := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "drover_api_db_commits_total",
		Help: "Write transactions committed on PostgreSQL (each COMMIT that PostgreSQL answered COMMIT); 0 on SQLite.",
	}, pgRead(func(c *pgCounter) int64 { return c.commits.Load() }))
	if reg != nil {
		for _, c := range []prometheus.Collector{dbTrips, dbStmts, dbCommits, m.requests, m.duration, m.authFailures, m.importRows, m.feedVersion,
			m.followers, m.presence, m.refused, m.commands, m.handoffs, m.alertEvents, m.writeGroups, m.groupRetries, m.commitTime, m.campaignDevs, m.notifyEvents, m.notifyLost,
			m.keyLookups, m.keyEvictions} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register api metrics: %w", err)
			}
		}
	}
	// Every series a dashboard reads exists from the start, at 0: a rate
	// over a series that appears with its first event misses that event.
	for _, ev := range commandEvents {
		m.commands.WithLabelValues(ev)
	}
	for _, r := range []string{"handed", "taken", "stale"} {
		m.handoffs.WithLabelValues(r)
	}
	for _, st := range campaignDeviceStates {
		m.campaignDevs.WithLabelValues(st)
	}
	return m, nil
}

// commandEvents are the values of drover_api_commands_total{event}.
var commandEvents = []string{"created", "sent", CmdDelivered, CmdSucceeded, CmdFailed, CmdExpired, CmdCancelled,
	"requeued", "refused_queue_full", "ignored", "pruned", ProgressDownloading, ProgressVerifying, ProgressInstalling}

// campaignDeviceStates are the states of a campaign's device.
var campaignDeviceStates = []string{CampDevPending, CampDevOffered, CampDevDownloading, CampDevVerifying, CampDevInstalling,
	CampDevSucceeded, CampDevFailed, CampDevSkipped}
