package lake

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/drover-telemetry/drover/internal/daemon"
)

// Compression codecs a lake file can use.
const (
	// CompressionZstd compresses best at a CPU cost that Write does not
	// notice (the default).
	CompressionZstd = "zstd"
	// CompressionSnappy is faster and compresses less.
	CompressionSnappy = "snappy"
)

// Config is the lake sink's configuration. Start from [DefaultConfig].
type Config struct {
	// Dir is the lake's local folder. With AzureURL set, the lake is in
	// Azure and Dir only holds files being built and downloaded copies
	// (under _tmp/), so it wants room for a few target-size files.
	Dir string
	// AzureURL, when set, puts the lake in Azure Blob Storage (or ADLS
	// Gen2): a container URL, https://ACCOUNT.blob.core.windows.net/CONTAINER,
	// optionally followed by a folder (an ADLS Gen2 .dfs. or abfss:// URL
	// is accepted and served through the Blob endpoint); or an account URL
	// with AzureContainer. Azurite's URLs are path style:
	// http://127.0.0.1:10000/devstoreaccount1/CONTAINER. A SAS in the query
	// is refused: a URL is a flag, and flags are shown on the command line;
	// give the SAS in the connection string.
	AzureURL string
	// AzureContainer is the container when AzureURL is an account URL.
	AzureContainer string
	// AzureConnectionString and AzureAccountKey authenticate to Azure (a
	// SAS goes in the connection string, SharedAccessSignature=...). As
	// flags they are secrets (see daemon.SecretVar): from the environment
	// or a file, never the command line. Empty also reads the environment
	// variables EnvAzureConnectionString and EnvAzureAccountKey.
	AzureConnectionString string
	AzureAccountKey       string

	// Name starts every file name the sink writes, and the sink compacts
	// only files that start with it: the storage writer's subscriber name,
	// unique among the writers sharing a lake.
	Name string
	// Compression is CompressionZstd or CompressionSnappy.
	Compression string

	// TargetFileSize is the size compaction aims at for the files of a
	// closed hour: it rolls a merged file once it reaches this size.
	TargetFileSize int64
	// CompactInterval is how often the sink looks for small files to
	// merge; 0 turns compaction off (Compact can still be called).
	CompactInterval time.Duration
	// CompactMinFiles is how many new files a partition that is still open
	// (the current hour) gathers before they are merged.
	CompactMinFiles int
	// CompactGrace is how long after its hour ends a partition still
	// counts as open (late readings are expected); after that, compaction
	// merges all its files below TargetFileSize.
	CompactGrace time.Duration
}

// DefaultConfig returns the configuration of a lake in ./data/lake, zstd,
// 128 MiB files, compaction every minute.
func DefaultConfig() Config {
	return Config{
		Dir:             "data/lake",
		Name:            "lake",
		Compression:     CompressionZstd,
		TargetFileSize:  128 << 20,
		CompactInterval: time.Minute,
		CompactMinFiles: 32,
		CompactGrace:    15 * time.Minute,
	}
}

// RegisterFlags defines the sink's flags in fs, bound to c, with c's current
// values as defaults. Every flag name starts with prefix, to which "-" is
// added if missing: RegisterFlags(fs, "lake") defines -lake-dir,
// -lake-azure-url, ....
func (c *Config) RegisterFlags(fs *flag.FlagSet, prefix string) {
	c.RegisterStoreFlags(fs, prefix)
	if prefix != "" && !strings.HasSuffix(prefix, "-") {
		prefix += "-"
	}
	fs.StringVar(&c.Compression, prefix+"compression", c.Compression,
		"Parquet `codec`: zstd or snappy")
	fs.Func(prefix+"target-file-size", fmt.Sprintf("`size` of compacted files, e.g. 128MiB (default %s)", formatSize(c.TargetFileSize)),
		func(s string) error {
			n, err := parseSize(s)
			if err != nil {
				return err
			}
			c.TargetFileSize = n
			return nil
		})
	fs.DurationVar(&c.CompactInterval, prefix+"compact-interval", c.CompactInterval,
		"how often to merge small files (`duration`; 0: never)")
	fs.IntVar(&c.CompactMinFiles, prefix+"compact-min-files", c.CompactMinFiles,
		"new files an open hour gathers before they are merged (`count`)")
	fs.DurationVar(&c.CompactGrace, prefix+"compact-grace", c.CompactGrace,
		"how long after its end an hour still takes late readings before its files are merged to full size (`duration`)")
}

// RegisterStoreFlags defines only the flags of where the lake is (the
// folder, the Azure URL and container, the Azure credentials), with the
// same names as RegisterFlags: for a process that writes a table of its
// own through a [Store] (the alert engine's alerts table).
func (c *Config) RegisterStoreFlags(fs *flag.FlagSet, prefix string) {
	if prefix != "" && !strings.HasSuffix(prefix, "-") {
		prefix += "-"
	}
	fs.StringVar(&c.Dir, prefix+"dir", c.Dir,
		"`folder` of the Parquet lake; with an Azure URL, the local folder for files being built")
	fs.StringVar(&c.AzureURL, prefix+"azure-url", c.AzureURL,
		"Azure Blob `URL` of the lake: https://ACCOUNT.blob.core.windows.net/CONTAINER[/FOLDER] (or abfss://CONTAINER@ACCOUNT.dfs.core.windows.net[/FOLDER]), or an account URL with -"+prefix+
			"azure-container; credentials from -"+prefix+"azure-connection-string or -"+prefix+"azure-account-key (default: the local folder)")
	fs.StringVar(&c.AzureContainer, prefix+"azure-container", c.AzureContainer,
		"Azure Blob `container` when the Azure URL is an account URL")
	daemon.SecretVar(fs, &c.AzureConnectionString, prefix+"azure-connection-string",
		"Azure storage connection `string` (AccountName and AccountKey, or SharedAccessSignature); also read from $"+EnvAzureConnectionString)
	daemon.SecretVar(fs, &c.AzureAccountKey, prefix+"azure-account-key",
		"Azure storage account `key` of the URL's account; also read from $"+EnvAzureAccountKey)
}

// connectionString returns the connection string: the field, or the
// environment.
func (c Config) connectionString() string {
	if c.AzureConnectionString != "" {
		return c.AzureConnectionString
	}
	return os.Getenv(EnvAzureConnectionString)
}

// accountKey returns the account key: the field, or the environment.
func (c Config) accountKey() string {
	if c.AzureAccountKey != "" {
		return c.AzureAccountKey
	}
	return os.Getenv(EnvAzureAccountKey)
}

// Validate reports every problem of the configuration at once.
func (c Config) Validate() error {
	var errs []error
	if err := c.validateStore(); err != nil {
		errs = append(errs, err)
	}
	if err := daemon.ValidateID(c.Name); err != nil {
		errs = append(errs, fmt.Errorf("name: %w", err))
	}
	if !slices.Contains([]string{CompressionZstd, CompressionSnappy}, c.Compression) {
		errs = append(errs, fmt.Errorf("compression: %q: want zstd or snappy", c.Compression))
	}
	if c.TargetFileSize < 1<<20 {
		errs = append(errs, fmt.Errorf("target-file-size: %d bytes: want at least 1MiB", c.TargetFileSize))
	}
	if c.CompactInterval < 0 {
		errs = append(errs, fmt.Errorf("compact-interval: %v: negative", c.CompactInterval))
	}
	if c.CompactMinFiles < 2 {
		errs = append(errs, fmt.Errorf("compact-min-files: %d: want at least 2", c.CompactMinFiles))
	}
	if c.CompactGrace < 0 {
		errs = append(errs, fmt.Errorf("compact-grace: %v: negative", c.CompactGrace))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("lake config: %w", err)
	}
	return nil
}

// ValidateStore reports every problem of the settings [OpenStore] uses:
// the folder, the Azure URL and container, the credentials.
func (c Config) ValidateStore() error {
	if err := c.validateStore(); err != nil {
		return fmt.Errorf("lake config: %w", err)
	}
	return nil
}

func (c Config) validateStore() error {
	var errs []error
	if c.Dir == "" {
		errs = append(errs, errors.New("dir: empty"))
	}
	if c.AzureURL != "" {
		t, err := parseAzureURL(c.AzureURL, c.AzureContainer)
		if err != nil {
			errs = append(errs, fmt.Errorf("azure-url: %w", err))
		} else if t.sas != "" {
			errs = append(errs, errors.New("azure-url: holds a SAS (a secret) in its query: give it in the connection string instead (SharedAccessSignature=...), from the environment or a file"))
		} else if _, err := newContainerClient(t, c.connectionString(), c.accountKey()); err != nil {
			errs = append(errs, fmt.Errorf("azure credentials: %w", err))
		}
	} else if c.AzureContainer != "" {
		errs = append(errs, errors.New("azure-container: set without azure-url"))
	}
	return errors.Join(errs...)
}

// parseSize reads a byte size: a number with an optional unit B, KiB, MiB,
// GiB (or K, M, G, also powers of 1024).
func parseSize(s string) (int64, error) {
	orig := s
	s = strings.TrimSpace(s)
	units := []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = strings.TrimSpace(num), u.mult
			break
		}
	}
	var n int64
	if _, err := fmt.Sscan(s, &n); err != nil || n < 0 || fmt.Sprint(n) != s {
		return 0, fmt.Errorf("%q: want a size such as 128MiB", orig)
	}
	if n > (1<<62)/mult {
		return 0, fmt.Errorf("%q: too large", orig)
	}
	return n * mult, nil
}

// formatSize writes a byte size in the largest unit that divides it.
func formatSize(n int64) string {
	switch {
	case n > 0 && n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	case n > 0 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n > 0 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}
