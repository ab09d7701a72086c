package daemon

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// LogConfig selects the level and format of a process's log.
type LogConfig struct {
	// Level is the lowest level logged: debug, info, warn or error.
	Level string
	// Format is text (logfmt-like key=value) or json (one object per line).
	Format string
}

// DefaultLogConfig returns info-level text logging.
func DefaultLogConfig() LogConfig {
	return LogConfig{Level: "info", Format: "text"}
}

// RegisterFlags defines -log-level and -log-format in fs, bound to c, with
// c's current values as defaults.
func (c *LogConfig) RegisterFlags(fs *flag.FlagSet) {
	if c.Level == "" {
		c.Level = "info"
	}
	if c.Format == "" {
		c.Format = "text"
	}
	fs.StringVar(&c.Level, "log-level", c.Level, "lowest log `level` written: debug, info, warn or error")
	fs.StringVar(&c.Format, "log-format", c.Format, "log `format`: text (key=value) or json (one object per line)")
}

// Validate reports an unknown level or format.
func (c LogConfig) Validate() error {
	if _, err := c.level(); err != nil {
		return err
	}
	switch c.Format {
	case "text", "json":
		return nil
	default:
		return fmt.Errorf("log format %q: want text or json", c.Format)
	}
}

func (c LogConfig) level() (slog.Level, error) {
	switch strings.ToLower(c.Level) {
	case "debug":
		return slog.LevelDebug, nil
	case "info", "":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	default:
		return 0, fmt.Errorf("log level %q: want debug, info, warn or error", c.Level)
	}
}

// NewLogger returns a logger writing to w at the configured level and format.
func (c LogConfig) NewLogger(w io.Writer) (*slog.Logger, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	lvl, _ := c.level()
	opts := &slog.HandlerOptions{Level: lvl}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return slog.New(slog.NewTextHandler(w, opts)), nil
}
