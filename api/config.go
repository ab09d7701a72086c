package api

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/drover-telemetry/drover/internal/auth"
	"github.com/drover-telemetry/drover/internal/daemon"
)

// Storage backends.
const (
	DriverSQLite   = "sqlite"
	DriverPostgres = "postgres"
)

// PostgresURLEnv is the environment variable read for the PostgreSQL URL
// when no -postgres-url-file is given: the URL carries a password, so it is
// never a flag (a command line is visible to every user of the host).
const PostgresURLEnv = "DROVER_API_POSTGRES_URL"

// Config is the api's configuration. Start from [DefaultConfig].
type Config struct {
	// Listen is the address of the REST API, host:port. Loopback by
	// default: an operator opens it on purpose.
	Listen string
	// DataDir holds the SQLite file and the bootstrap admin key.
	DataDir string

	// Driver is DriverSQLite (one file under DataDir, one replica) or
	// DriverPostgres (several replicas may share the database).
	Driver string
	// SQLitePath is the SQLite file; empty: DataDir/api.db.
	SQLitePath string
	// PostgresURLFile is a file holding the PostgreSQL URL
	// (postgres://user:password@host:port/db?sslmode=...). Empty: the URL
	// is read from $DROVER_API_POSTGRES_URL.
	PostgresURLFile string
	// PostgresURL is the URL itself, for callers that build a Config in
	// code (tests, drover all); [Config.Validate] fills it from the file or
	// the environment when empty.
	PostgresURL string
	// MaxConns bounds the database connections of this replica.
	MaxConns int

	// TLSCert and TLSKey are PEM files; both or neither. They are read
	// again on SIGHUP and when either changes (certificate renewal without
	// a restart; internal/tlsserve, as the frontend and the livefeed).
	TLSCert string
	TLSKey  string
	// CORSOrigins are the browser origins allowed to call the API; empty:
	// none (CORS off). "*" allows every origin (credentials are bearer
	// tokens, never cookies, so this does not leak a session).
	CORSOrigins []string

	// BootstrapKeyFile is where the first start writes the admin key it
	// creates when no operator exists; empty: DataDir/api-admin-key.
	BootstrapKeyFile string

	// FollowerKeyFile, when set, holds a key of a follower operator after
	// every start (created when missing or no longer valid; mode 0600):
	// what the frontends, routers and livefeeds of this host read
	// (-registry-api-key-file). drover all uses DataDir/follower-key.
	FollowerKeyFile string
	// Seed lists devices to create at start when they do not exist (with
	// the fleets, classes and regions they name): drover all -simulate
	// registers its simulated fleet so. Not a flag.
	Seed []ImportRow `json:"-"`

	// MaxBodyBytes bounds a request body (a bulk import of 100,000 rows
	// is ~15 MB of CSV).
	MaxBodyBytes int64
	// MaxImportRows bounds the rows of one import.
	MaxImportRows int
	// FeedPoll is how often the replica reads the database's change
	// version, to wake long polls for changes made by other replicas.
	FeedPoll time.Duration
	// FeedMaxWait bounds the wait= of a changes long poll.
	FeedMaxWait time.Duration
	// TombstoneRetention is how long deleted devices stay in the change
	// feed; a follower further behind must take a new snapshot.
	TombstoneRetention time.Duration

	// AuthLimit limits failed authentications per client address (an IPv6
	// client per /64) and, with the same settings, per API key id: past
	// AuthLimit.Failures within AuthLimit.Window the address or key id is
	// answered 429 with a Retry-After, before the key is looked at, for
	// AuthLimit.Block, doubling with each repeat up to AuthLimit.MaxBlock
	// (internal/auth's limiter, shared with the frontend and the
	// livefeed).
	AuthLimit auth.LimitConfig
	// KeyCacheMaxAge bounds how long an API key read from the database
	// is trusted without reading it again (keycache.go); 0 turns the
	// cache off. Revocations and operator changes evict at once whatever
	// this says: the age is a second line of defence.
	KeyCacheMaxAge time.Duration
	// KeyCacheSize bounds the keys cached; at the limit the cache is
	// emptied.
	KeyCacheSize int
	// TrustedProxies are the addresses or prefixes of proxies whose
	// X-Forwarded-For names the client; without them the TCP peer is the
	// client.
	TrustedProxies []string

	// ShutdownGrace bounds how long a stop waits for requests in flight
	// (long polls are ended at once).
	ShutdownGrace time.Duration
	// Commands bounds commands to devices (commands.go).
	Commands CommandConfig
	// FirmwareMaxBytes bounds an uploaded firmware image (MaxBodyBytes
	// bounds every body: the smaller of the two applies).
	FirmwareMaxBytes int64
}

// apiAuthLimit is the API's failure limit: stricter than a device edge's
// (an operator's script fails a few times, not thirty; no carrier-grade NAT
// puts thousands of operators behind one address), with a short first block
// so that a typo costs a second, not half a minute.
func apiAuthLimit() auth.LimitConfig {
	l := auth.DefaultLimitConfig()
	l.Failures, l.Block, l.MaxBlock = 10, time.Second, 5*time.Minute
	return l
}

// DefaultConfig returns the configuration of a single replica on a laptop:
// SQLite under ./data/api, loopback port 8090.
func DefaultConfig() Config {
	return Config{
		Listen:             "127.0.0.1:8090",
		DataDir:            "data/api",
		Driver:             DriverSQLite,
		MaxConns:           8,
		MaxBodyBytes:       64 << 20,
		MaxImportRows:      100_000,
		FeedPoll:           250 * time.Millisecond,
		FeedMaxWait:        60 * time.Second,
		TombstoneRetention: 7 * 24 * time.Hour,
		AuthLimit:          apiAuthLimit(),
		KeyCacheMaxAge:     30 * time.Second,
		KeyCacheSize:       10_000,
		ShutdownGrace:      10 * time.Second,
		Commands:           DefaultCommandConfig(),
		FirmwareMaxBytes:   32 << 20,
	}
}

// RegisterFlags defines the api's flags in fs, bound to c, with c's current
// values as defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Listen, "listen", c.Listen,
		"`address` (host:port) of the REST API; loopback unless you open it on purpose")
	fs.StringVar(&c.DataDir, "data-dir", c.DataDir,
		"`directory` of the SQLite file and the bootstrap admin key")
	fs.StringVar(&c.Driver, "db", c.Driver,
		"database `driver`: sqlite (one file, one replica) or postgres (several replicas; URL from -postgres-url-file or $"+PostgresURLEnv+")")
	fs.StringVar(&c.SQLitePath, "sqlite-file", c.SQLitePath,
		"SQLite database `file` (default DATA-DIR/api.db)")
	fs.StringVar(&c.PostgresURLFile, "postgres-url-file", c.PostgresURLFile,
		"`file` holding the PostgreSQL URL (it holds a password: never a flag); default $"+PostgresURLEnv)
	fs.IntVar(&c.MaxConns, "db-max-conns", c.MaxConns, "most database `connections` of this replica")
	fs.StringVar(&c.TLSCert, "tls-cert", c.TLSCert, "PEM certificate `file` (with -tls-key: serve HTTPS); reread on SIGHUP and when it changes")
	fs.StringVar(&c.TLSKey, "tls-key", c.TLSKey, "PEM private key `file` of -tls-cert; reread with it")
	fs.Var((*daemon.StringList)(&c.CORSOrigins), "cors-origins",
		"comma-separated browser `origins` allowed to call the API (https://ops.example.com); * for any; empty: no CORS")
	fs.StringVar(&c.BootstrapKeyFile, "bootstrap-key-file", c.BootstrapKeyFile,
		"`file` (mode 0600) where the first start writes the admin key it creates (default DATA-DIR/api-admin-key)")
	fs.StringVar(&c.FollowerKeyFile, "follower-key-file", c.FollowerKeyFile,
		"`file` (mode 0600) kept holding a key of a follower operator, created at start when missing or no longer valid: what frontends, routers and livefeeds on this host give as -registry-api-key-file")
	fs.Int64Var(&c.MaxBodyBytes, "max-body-bytes", c.MaxBodyBytes, "largest request body in `bytes` (imports)")
	fs.IntVar(&c.MaxImportRows, "max-import-rows", c.MaxImportRows, "most `rows` in one device import")
	fs.DurationVar(&c.FeedPoll, "feed-poll", c.FeedPoll,
		"how often (`duration`) the database's change version is read, to wake followers for other replicas' changes")
	fs.DurationVar(&c.FeedMaxWait, "feed-max-wait", c.FeedMaxWait, "longest `duration` a follower's changes long poll may wait")
	fs.DurationVar(&c.TombstoneRetention, "tombstone-retention", c.TombstoneRetention,
		"how long (`duration`) deleted devices stay in the change feed; followers further behind resync")
	c.AuthLimit.RegisterFlags(fs, "client address or API key id")
	fs.DurationVar(&c.KeyCacheMaxAge, "key-cache-max-age", c.KeyCacheMaxAge,
		"longest `duration` an API key read from the database is trusted without reading it again (revocations and operator changes evict at once, on every replica); 0: no cache")
	fs.IntVar(&c.KeyCacheSize, "key-cache-size", c.KeyCacheSize, "most API `keys` cached; at the limit the cache is emptied")
	fs.Var((*daemon.StringList)(&c.TrustedProxies), "trusted-proxies",
		"comma-separated `addresses or prefixes` of proxies whose X-Forwarded-For names the client")
	fs.DurationVar(&c.ShutdownGrace, "shutdown-grace", c.ShutdownGrace,
		"on stop, how long (`duration`) requests in flight may take to finish")
	c.Commands.RegisterFlags(fs)
	fs.Int64Var(&c.FirmwareMaxBytes, "firmware-max-bytes", c.FirmwareMaxBytes,
		"largest firmware image in `bytes` (every body is also bounded by -max-body-bytes: the smaller applies)")
}

// Validate reports every problem of the configuration at once, and reads
// the PostgreSQL URL from its file or the environment.
func (c *Config) Validate() error {
	var errs []error
	if err := daemon.ValidateListenAddr(c.Listen); err != nil {
		errs = append(errs, fmt.Errorf("listen: %w", err))
	}
	switch c.Driver {
	case DriverSQLite:
		if c.SQLitePath == "" && c.DataDir == "" {
			errs = append(errs, errors.New("data-dir: empty (and no -sqlite-file)"))
		}
	case DriverPostgres:
		if c.PostgresURL == "" {
			if err := c.loadPostgresURL(); err != nil {
				errs = append(errs, err)
			}
		}
	default:
		errs = append(errs, fmt.Errorf("db: %q, want sqlite or postgres", c.Driver))
	}
	if c.BootstrapKeyFile == "" && c.DataDir == "" {
		errs = append(errs, errors.New("data-dir: empty (and no -bootstrap-key-file)"))
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		errs = append(errs, errors.New("tls-cert and tls-key: give both or neither"))
	}
	for _, o := range c.CORSOrigins {
		if o != "*" && !strings.HasPrefix(o, "http://") && !strings.HasPrefix(o, "https://") {
			errs = append(errs, fmt.Errorf("cors-origins: %q, want an origin like https://ops.example.com, or *", o))
		}
	}
	for _, p := range []struct {
		name string
		v    int64
	}{
		{"db-max-conns", int64(c.MaxConns)}, {"max-body-bytes", c.MaxBodyBytes},
		{"max-import-rows", int64(c.MaxImportRows)}, {"key-cache-size", int64(c.KeyCacheSize)},
	} {
		if p.v <= 0 {
			errs = append(errs, fmt.Errorf("%s: %d, want > 0", p.name, p.v))
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"feed-poll", c.FeedPoll}, {"feed-max-wait", c.FeedMaxWait}, {"tombstone-retention", c.TombstoneRetention},
		{"shutdown-grace", c.ShutdownGrace},
	} {
		if d.v <= 0 {
			errs = append(errs, fmt.Errorf("%s: %v, want > 0", d.name, d.v))
		}
	}
	if c.KeyCacheMaxAge < 0 {
		errs = append(errs, fmt.Errorf("key-cache-max-age: %v, want >= 0 (0: no cache)", c.KeyCacheMaxAge))
	}
	errs = append(errs, c.Commands.validate()...)
	if c.FirmwareMaxBytes <= 0 {
		errs = append(errs, fmt.Errorf("firmware-max-bytes: %d, want > 0", c.FirmwareMaxBytes))
	}
	if err := c.AuthLimit.Validate("auth-"); err != nil {
		errs = append(errs, err)
	}
	if _, err := auth.ParseProxies(c.TrustedProxies); err != nil {
		errs = append(errs, fmt.Errorf("trusted-proxies: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("api config: %w", err)
	}
	return nil
}

func (c *Config) loadPostgresURL() error {
	if c.PostgresURLFile != "" {
		b, err := os.ReadFile(c.PostgresURLFile)
		if err != nil {
			return fmt.Errorf("postgres-url-file: %w", err)
		}
		c.PostgresURL = strings.TrimSpace(string(b))
		if c.PostgresURL == "" {
			return fmt.Errorf("postgres-url-file %s: empty", c.PostgresURLFile)
		}
		return nil
	}
	c.PostgresURL = strings.TrimSpace(os.Getenv(PostgresURLEnv))
	if c.PostgresURL == "" {
		return fmt.Errorf("db postgres: no URL: give -postgres-url-file or set $%s", PostgresURLEnv)
	}
	return nil
}

func (c Config) sqlitePath() string {
	if c.SQLitePath != "" {
		return c.SQLitePath
	}
	return c.DataDir + "/api.db"
}

func (c Config) bootstrapKeyFile() string {
	if c.BootstrapKeyFile != "" {
		return c.BootstrapKeyFile
	}
	return c.DataDir + "/api-admin-key"
}
