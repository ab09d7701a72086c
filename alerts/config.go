package alerts

import (
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/drover-telemetry/drover/alerts/eval"
	"github.com/drover-telemetry/drover/internal/apiclient"
	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/daemon"
	"github.com/drover-telemetry/drover/internal/endpoints"
	"github.com/drover-telemetry/drover/internal/forward"
	"github.com/drover-telemetry/drover/storagewriter/influx"
	"github.com/drover-telemetry/drover/storagewriter/lake"
)

// Config is the alert engine's configuration. Start from [DefaultConfig].
type Config struct {
	// Routers are the store. lane endpoints of every router. A
	// dns+tcp://name:port entry stands for every address the name resolves
	// to, followed while the engine runs (internal/endpoints), as the
	// storage writers do.
	Routers []string
	// Resolve says how often, and through which DNS server, dns+tcp://
	// entries of Routers are looked up.
	Resolve endpoints.Config
	// Name is the durable subscriber name the routers keep the engine's
	// data under.
	Name string
	// DataDir holds the queue, the snapshots, the rule sets and the
	// outbox; it must survive restarts (a volume) and belong to this
	// engine alone.
	DataDir string
	// QueueMaxBytes bounds the engine's queue (0: a share of the volume).
	QueueMaxBytes int64
	// OutboxMaxBytes bounds the outbox: an output further behind than that
	// (a webhook receiver down for days) loses its oldest alerts, logged.
	OutboxMaxBytes int64
	// Links secures the store link and the alert lane.
	Links clusterlink.Config

	// RulesFile, when set, is the rule set (JSON, docs/alerts.md), read at
	// start and again when it changes.
	RulesFile string
	// APIURL, when set, is the control plane the engine follows for its
	// rule set and reports alerts to (with the API key APIKey).
	APIURL string
	APIKey string
	// APICAFile is a PEM file of the certificate authorities that sign the
	// API's certificate, for an https:// APIURL (empty: the system's).
	APICAFile string
	// APIKeyFunc, when set (not a flag), gives the API key when APIKey is
	// empty, at each use: drover all reads the in-process API's follower
	// key file, which the API writes when it starts.
	APIKeyFunc func() (string, error) `json:"-"`

	// AlertPub is the endpoint of the alert lane (livefeeds subscribe).
	// Empty: no alert lane.
	AlertPub string
	// LiveMaxAge: an alert event older than this (device time) is not
	// published on the alert lane: it is news for the record, not for a
	// screen.
	LiveMaxAge time.Duration

	// Influx, when Influx.URL is set, is where the alerts measurement is
	// written.
	Influx influx.Config
	// Lake, when Lake.Dir is set, is where the lake's alerts table goes:
	// the folder Lake.Dir itself, or, with Lake.AzureURL, an Azure Blob
	// container (and folder), with Lake.Dir holding the files being built.
	// Only its store settings are used (lake.Config.RegisterStoreFlags);
	// the table is never the readings' folder or container root, whose
	// "**/*.parquet" would read it as readings.
	Lake lake.Config
	// LakeFlush is how often events are written to the lake as a file.
	LakeFlush time.Duration

	// WebhookTimeout bounds one webhook request; WebhookMaxBackoff the wait
	// between two attempts at a receiver that fails.
	WebhookTimeout    time.Duration
	WebhookMaxBackoff time.Duration

	// Eval are the evaluator's time semantics.
	Eval eval.Options
	// SnapshotInterval is how often the evaluator's state is saved (and
	// the queue behind it acked).
	SnapshotInterval time.Duration
	// TickInterval is the engine's clock: how often silences and held
	// readings are judged.
	TickInterval time.Duration
}

// DefaultConfig returns the defaults of every setting.
func DefaultConfig() Config {
	in := influx.DefaultConfig()
	in.URL, in.Measurement = "", "alerts"
	return Config{
		Routers:           []string{"tcp://127.0.0.1:5557"},
		Resolve:           endpoints.DefaultConfig(),
		Name:              "alerts",
		DataDir:           "alerts-data",
		OutboxMaxBytes:    1 << 30,
		AlertPub:          "tcp://127.0.0.1:5558",
		LiveMaxAge:        15 * time.Minute,
		Influx:            in,
		Lake:              lake.Config{Name: lakeWriter},
		LakeFlush:         time.Minute,
		WebhookTimeout:    10 * time.Second,
		WebhookMaxBackoff: time.Minute,
		Eval:              eval.DefaultOptions(),
		SnapshotInterval:  5 * time.Second,
		TickInterval:      time.Second,
	}
}

// RegisterFlags defines the engine's flags in fs, bound to c.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	routers := (*daemon.StringList)(&c.Routers)
	fs.Var(routers, "routers", "comma-separated store. lane `endpoints` of every router (their -store-listen); dns+tcp://name:port: every address the name resolves to, followed as routers come and go")
	c.Resolve.RegisterFlags(fs, "-routers")
	fs.StringVar(&c.Name, "name", c.Name, "durable subscriber `name` (every router must list it in -subscribers)")
	fs.StringVar(&c.DataDir, "data-dir", c.DataDir, "`directory` of the queue, snapshots, rule sets and outbox (a volume of its own)")
	fs.Int64Var(&c.QueueMaxBytes, "queue-max-bytes", c.QueueMaxBytes, "bound of the queue in `bytes` (0: a share of the volume)")
	fs.Int64Var(&c.OutboxMaxBytes, "outbox-max-bytes", c.OutboxMaxBytes,
		"bound of the outbox in `bytes`: an output further behind (a webhook receiver down for days) loses its oldest alerts")
	c.Links.RegisterFlags(fs)
	fs.StringVar(&c.RulesFile, "rules", c.RulesFile, "rule set `file` (JSON: docs/alerts.md), re-read when it changes; for running without the API")
	fs.StringVar(&c.APIURL, "api-url", c.APIURL, "control plane base `URL` (drover api): https://, or http:// on loopback only (the key must not cross a network in clear); the rule set is followed from it and alerts are reported to it")
	daemon.SecretVar(fs, &c.APIKey, "api-key", "API `key` of an operator with the follower role, for -api-url")
	fs.StringVar(&c.APICAFile, "api-ca-file", c.APICAFile, "PEM `file` of the certificate authorities that sign the API's certificate (default: the system's)")
	fs.StringVar(&c.AlertPub, "alert-pub", c.AlertPub, "ZeroMQ `endpoint` of the alert lane that livefeeds subscribe to (empty: none)")
	fs.DurationVar(&c.LiveMaxAge, "live-max-age", c.LiveMaxAge, "alert events older than this `duration` (device time) are not published live (they still go everywhere else)")
	c.Influx.RegisterFlags(fs, "influx-")
	c.Lake.RegisterStoreFlags(fs, "lake")
	fs.Lookup("lake-dir").Usage = "`folder` of the lake's alerts table (empty: none), not the readings' folder; with -lake-azure-url, the local folder of files being built"
	fs.Lookup("lake-azure-url").Usage = "Azure Blob `URL` of the lake's alerts table, beside the readings but not under their folder: " +
		"https://ACCOUNT.blob.core.windows.net/CONTAINER[/FOLDER], or an account URL with -lake-azure-container; needs -lake-dir; " +
		"credentials as the storage writer's (-lake-azure-connection-string-file, -lake-azure-account-key-file, $" + lake.EnvAzureConnectionString + ")"
	fs.DurationVar(&c.LakeFlush, "lake-flush", c.LakeFlush, "write the alerts gathered to the lake this often (`duration`)")
	fs.DurationVar(&c.WebhookTimeout, "webhook-timeout", c.WebhookTimeout, "longest webhook request (`duration`)")
	fs.DurationVar(&c.WebhookMaxBackoff, "webhook-max-backoff", c.WebhookMaxBackoff, "longest wait between two attempts at a failing webhook receiver (`duration`)")
	fs.DurationVar(&c.Eval.LateAfter, "late-after", c.Eval.LateAfter, "an alert found in readings that reached drover later than this (`duration`) after they were taken is marked late")
	fs.DurationVar(&c.Eval.ReorderWindow, "reorder-window", c.Eval.ReorderWindow, "how long (`duration`) a reading after a gap in its device's seqs waits for the missing ones")
	fs.DurationVar(&c.SnapshotInterval, "snapshot-interval", c.SnapshotInterval, "how often (`duration`) the evaluator's state is saved")
	fs.DurationVar(&c.TickInterval, "tick", c.TickInterval, "the engine's clock (`duration`): how often silences are judged")
}

// Validate reports every problem of the configuration at once.
func (c Config) Validate() error {
	var errs []error
	if err := daemon.ValidateEndpoints(c.Routers); err != nil {
		errs = append(errs, fmt.Errorf("routers: %w", err))
	}
	if err := c.Resolve.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := forward.ValidateSubscriberName(c.Name); err != nil {
		errs = append(errs, fmt.Errorf("name: %w", err))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("data-dir: empty"))
	}
	if err := c.Links.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.RulesFile != "" && c.APIURL != "" {
		errs = append(errs, errors.New("rules: given with api-url: the rule set comes from one of them"))
	}
	if c.APIURL != "" {
		if err := apiclient.CheckURL("api-url", c.APIURL); err != nil {
			errs = append(errs, err)
		}
		if c.APICAFile != "" {
			if err := apiclient.CheckCAFile(c.APICAFile); err != nil {
				errs = append(errs, fmt.Errorf("api-ca-file: %w", err))
			}
		}
		if c.APIKey == "" && c.APIKeyFunc == nil {
			errs = append(errs, errors.New("api-key: required with api-url (from $DROVER_ALERTS_API_KEY or -api-key-file)"))
		}
	}
	if c.APICAFile != "" && c.APIURL == "" {
		errs = append(errs, errors.New("api-ca-file: given without api-url"))
	}
	if c.Lake.Dir != "" || c.Lake.AzureURL != "" {
		if err := c.Lake.ValidateStore(); err != nil {
			errs = append(errs, err)
		}
	}
	if c.AlertPub != "" {
		if err := daemon.ValidateEndpoint(c.AlertPub, true); err != nil {
			errs = append(errs, fmt.Errorf("alert-pub: %w", err))
		}
	}
	if c.Influx.URL != "" {
		if err := c.Influx.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	for name, d := range map[string]time.Duration{"live-max-age": c.LiveMaxAge, "lake-flush": c.LakeFlush,
		"webhook-timeout": c.WebhookTimeout, "webhook-max-backoff": c.WebhookMaxBackoff, "late-after": c.Eval.LateAfter,
		"snapshot-interval": c.SnapshotInterval, "tick": c.TickInterval} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("%s: %v: must be positive", name, d))
		}
	}
	if c.Eval.ReorderWindow < 0 {
		errs = append(errs, errors.New("reorder-window: negative"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("alerts config: %w", err)
	}
	return nil
}
