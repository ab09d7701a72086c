package lake

import (
	"flag"
	"strings"
	"testing"
	"time"
)

func TestRegisterFlags(t *testing.T) {
	for _, prefix := range []string{"lake", "lake-"} {
		cfg := DefaultConfig()
		fs := flag.NewFlagSet("test", flag.ContinueOnError)
		cfg.RegisterFlags(fs, prefix)
		err := fs.Parse([]string{
			"-lake-dir=/var/lib/drover/lake",
			"-lake-azure-url=https://acct.blob.core.windows.net/telemetry",
			"-lake-compression=snappy",
			"-lake-target-file-size=256MiB",
			"-lake-compact-interval=30s",
			"-lake-compact-min-files=64",
			"-lake-compact-grace=1h",
		})
		if err != nil {
			t.Fatalf("prefix %q: %v", prefix, err)
		}
		want := DefaultConfig()
		want.Dir = "/var/lib/drover/lake"
		want.AzureURL = "https://acct.blob.core.windows.net/telemetry"
		want.Compression = CompressionSnappy
		want.TargetFileSize = 256 << 20
		want.CompactInterval = 30 * time.Second
		want.CompactMinFiles = 64
		want.CompactGrace = time.Hour
		if cfg != want {
			t.Errorf("prefix %q: parsed\n%+v\nwant\n%+v", prefix, cfg, want)
		}
	}
}

func TestValidate(t *testing.T) {
	t.Setenv(EnvAzureConnectionString, "")
	t.Setenv(EnvAzureAccountKey, "")
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("default config: %v", err)
	}
	cases := map[string]struct {
		edit func(*Config)
		want []string // substrings of the error; nil: valid
	}{
		"everything wrong": {func(c *Config) {
			c.Dir, c.Name, c.Compression, c.TargetFileSize = "", "-x", "gzip", 1000
			c.CompactInterval, c.CompactMinFiles, c.CompactGrace = -1, 1, -1
		}, []string{"dir: empty", "name:", "compression:", "target-file-size:", "compact-interval:", "compact-min-files:", "compact-grace:"}},
		"azure without credentials": {func(c *Config) { c.AzureURL = "https://acct.blob.core.windows.net/c" },
			[]string{"no credential", EnvAzureConnectionString}},
		"azure with key": {func(c *Config) {
			c.AzureURL, c.AzureAccountKey = "https://acct.blob.core.windows.net/c", "a2V5"
		}, nil},
		"azure with a sas in the url": {func(c *Config) { c.AzureURL = "https://acct.blob.core.windows.net/c?sv=2023-01-03&sig=abc" },
			[]string{"holds a SAS", "connection string"}},
		"azure with a sas in the connection string": {func(c *Config) {
			c.AzureURL, c.AzureConnectionString = "https://acct.blob.core.windows.net/c", "SharedAccessSignature=sv=2023-01-03&sig=abc"
		}, nil},
		"azure connection string for another account": {func(c *Config) {
			c.AzureURL = "https://acct.blob.core.windows.net/c"
			c.AzureConnectionString = "AccountName=other;AccountKey=a2V5"
		}, []string{`account "other"`}},
		"azure no container": {func(c *Config) {
			c.AzureURL, c.AzureAccountKey = "https://acct.blob.core.windows.net/", "a2V5"
		}, []string{"no container"}},
		"azure not http":        {func(c *Config) { c.AzureURL = "ftp://acct.blob.core.windows.net/c" }, []string{"http(s)"}},
		"container without url": {func(c *Config) { c.AzureContainer = "c" }, []string{"azure-container"}},
	}
	for name, c := range cases {
		cfg := DefaultConfig()
		c.edit(&cfg)
		err := cfg.Validate()
		if c.want == nil {
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: valid, want an error", name)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not say %q", name, err, w)
			}
		}
	}
}

func TestValidateReadsEnv(t *testing.T) {
	t.Setenv(EnvAzureConnectionString, "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5;EndpointSuffix=core.windows.net")
	cfg := DefaultConfig()
	cfg.AzureURL = "https://acct.blob.core.windows.net/c"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestParseAzureURL(t *testing.T) {
	cases := []struct {
		url, container string
		want           azureTarget
	}{
		{"https://acct.blob.core.windows.net/telemetry", "",
			azureTarget{containerURL: "https://acct.blob.core.windows.net/telemetry", account: "acct", container: "telemetry"}},
		{"https://acct.blob.core.windows.net/telemetry/lake/v1/", "",
			azureTarget{containerURL: "https://acct.blob.core.windows.net/telemetry", account: "acct", container: "telemetry", prefix: "lake/v1/"}},
		{"https://acct.dfs.core.windows.net/telemetry", "",
			azureTarget{containerURL: "https://acct.blob.core.windows.net/telemetry", account: "acct", container: "telemetry"}},
		{"abfss://telemetry@acct.dfs.core.windows.net/lake", "",
			azureTarget{containerURL: "https://acct.blob.core.windows.net/telemetry", account: "acct", container: "telemetry", prefix: "lake/"}},
		{"https://acct.blob.core.windows.net", "telemetry",
			azureTarget{containerURL: "https://acct.blob.core.windows.net/telemetry", account: "acct", container: "telemetry"}},
		{"http://127.0.0.1:10000/devstoreaccount1/lake", "",
			azureTarget{containerURL: "http://127.0.0.1:10000/devstoreaccount1/lake", account: "devstoreaccount1", container: "lake"}},
		{"http://127.0.0.1:10000/devstoreaccount1", "lake",
			azureTarget{containerURL: "http://127.0.0.1:10000/devstoreaccount1/lake", account: "devstoreaccount1", container: "lake"}},
		{"https://acct.blob.core.windows.net/telemetry?sv=2023-01-03&sig=abc", "",
			azureTarget{containerURL: "https://acct.blob.core.windows.net/telemetry", account: "acct", container: "telemetry", sas: "sv=2023-01-03&sig=abc"}},
	}
	for _, c := range cases {
		got, err := parseAzureURL(c.url, c.container)
		if err != nil || got != c.want {
			t.Errorf("parseAzureURL(%q, %q) =\n%+v, %v\nwant %+v", c.url, c.container, got, err, c.want)
		}
	}
}

func TestParseSize(t *testing.T) {
	good := map[string]int64{"128MiB": 128 << 20, "1GiB": 1 << 30, "512K": 512 << 10, "1048576": 1 << 20, "64 MiB": 64 << 20, "10B": 10}
	for s, want := range good {
		if got, err := parseSize(s); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", s, got, err, want)
		}
		if back, _ := parseSize(formatSize(want)); back != want {
			t.Errorf("formatSize(%d) = %q does not parse back", want, formatSize(want))
		}
	}
	for _, s := range []string{"", "MiB", "-1MiB", "1.5GiB", "12TB", "99999999999GiB"} {
		if _, err := parseSize(s); err == nil {
			t.Errorf("parseSize(%q) accepted", s)
		}
	}
}
