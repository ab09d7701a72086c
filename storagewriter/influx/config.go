package influx

import (
	"errors"
	"flag"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/drover-telemetry/drover/internal/daemon"
)

// Config is the InfluxDB sink's configuration. Start from [DefaultConfig].
//
// There is no precision setting: points are always written with nanosecond
// precision, because the sub-millisecond part of each timestamp carries the
// reading's sequence number (see the package documentation). Nor is there
// batching or retrying: the storage writer owns both.
type Config struct {
	// URL is the InfluxDB server's base URL, e.g. http://localhost:8086.
	URL string
	// Database is the InfluxDB 1.x database (with InfluxDB 2.x or 3, the
	// database of a DBRP mapping, or the bucket's name). It must exist.
	Database string
	// RetentionPolicy is the database's retention policy to write to; empty
	// means the database's default one.
	RetentionPolicy string
	// Token authenticates the writes: "user:password" for InfluxDB 1.8 with
	// authentication on, an API token for InfluxDB 2.x and 3, or empty. As
	// a flag it is a secret (see daemon.SecretVar): from the environment or
	// a file, never the command line.
	Token string
	// Measurement is the measurement every reading is written to.
	Measurement string
	// Timeout bounds one write request (sending the batch and InfluxDB's
	// answer); a request that takes longer fails transiently.
	Timeout time.Duration
	// GZip compresses request bodies: worth it over a slow or metered
	// network, a waste of CPU on loopback.
	GZip bool
	// CreateDatabase makes the sink create Database (InfluxQL CREATE
	// DATABASE, InfluxDB 1.x) when InfluxDB says it does not exist, at start
	// and whenever a write finds it missing. Convenient on a laptop (drover
	// all turns it on); in production create the database yourself, with
	// the retention policy you want, and leave this off: the writer then
	// holds the records and says so (/readyz, a metric, one log line) until
	// the database exists.
	CreateDatabase bool
}

// DefaultConfig returns the configuration of a sink writing to an InfluxDB
// on the same host, database "drover", measurement "telemetry".
func DefaultConfig() Config {
	return Config{
		URL:         "http://localhost:8086",
		Database:    "drover",
		Measurement: "telemetry",
		Timeout:     30 * time.Second,
	}
}

// RegisterFlags defines the sink's flags in fs, each name prefixed with
// prefix (e.g. "influx-" gives -influx-url), bound to c, with c's current
// values as defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet, prefix string) {
	fs.StringVar(&c.URL, prefix+"url", c.URL,
		"InfluxDB base `URL` (its /api/v2/write serves the writes: InfluxDB 1.8+, 2.x or 3)")
	fs.StringVar(&c.Database, prefix+"database", c.Database,
		"InfluxDB `database` to write to (with InfluxDB 2.x/3: the bucket or DBRP database); it must exist")
	fs.StringVar(&c.RetentionPolicy, prefix+"retention-policy", c.RetentionPolicy,
		"InfluxDB retention `policy` of the database (default: the database's default policy)")
	daemon.SecretVar(fs, &c.Token, prefix+"token",
		"InfluxDB credentials: `user:password` for InfluxDB 1.8 with auth, an API token for 2.x/3")
	fs.StringVar(&c.Measurement, prefix+"measurement", c.Measurement,
		"InfluxDB `measurement` that readings are written to")
	fs.DurationVar(&c.Timeout, prefix+"timeout", c.Timeout,
		"longest `duration` of one InfluxDB write request before it counts as failed (and is retried)")
	fs.BoolVar(&c.GZip, prefix+"gzip", c.GZip,
		"gzip InfluxDB write requests (worth it over a slow network)")
	fs.BoolVar(&c.CreateDatabase, prefix+"create-database", c.CreateDatabase,
		"create the database if InfluxDB says it does not exist (InfluxDB 1.x; needs admin rights when auth is on); in production create it yourself, with its retention policy")
}

// Validate reports every problem of the configuration at once.
func (c Config) Validate() error {
	var errs []error
	if u, err := url.Parse(c.URL); err != nil {
		errs = append(errs, fmt.Errorf("url: %w", err))
	} else if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("url: %q: want http://host:port or https://host:port", u.Redacted()))
	} else if u.User != nil {
		// A URL is a flag, logged and shown in /debug/pprof/cmdline:
		// credentials go where secrets go.
		errs = append(errs, fmt.Errorf("url: %q: credentials in the URL; give them as the token (from the environment or a file)", u.Redacted()))
	}
	if c.Database == "" {
		errs = append(errs, errors.New("database: empty"))
	} else if strings.Contains(c.Database, "/") {
		// The v2 write API's bucket is "database/retention-policy".
		errs = append(errs, fmt.Errorf("database: %q: must not contain '/'", c.Database))
	}
	if strings.Contains(c.RetentionPolicy, "/") {
		errs = append(errs, fmt.Errorf("retention-policy: %q: must not contain '/'", c.RetentionPolicy))
	}
	if c.Measurement == "" {
		errs = append(errs, errors.New("measurement: empty"))
	} else if strings.ContainsAny(c.Measurement, "\n\r\t") || strings.HasPrefix(c.Measurement, "#") {
		errs = append(errs, fmt.Errorf("measurement: %q: no control characters, and no leading '#'", c.Measurement))
	}
	if c.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("timeout: %v: must be positive", c.Timeout))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("influx config: %w", err)
	}
	return nil
}

// bucket is the v2 write API's bucket for a 1.x database and retention
// policy: "db/rp", or "db" for the default policy.
func (c Config) bucket() string {
	if c.RetentionPolicy == "" {
		return c.Database
	}
	return c.Database + "/" + c.RetentionPolicy
}
