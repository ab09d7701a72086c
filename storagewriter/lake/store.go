package lake

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/drover-telemetry/drover/internal/daemon"
)

// ErrExists is what [Store.Publish] returns when the name is taken: a file
// of that name is in the lake, whole.
var ErrExists = errExists

// Store is where a lake's files go, on its own: the local folder or the
// Azure Blob container (and folder) of a [Config], with the same atomic,
// durable publication as the sink's (see the package documentation). It
// serves a table other than the readings (the alert engine's alerts
// table), written by a process that builds its own Parquet files. Its
// methods are safe for concurrent use.
type Store struct {
	dest    destination
	scratch string
}

// OpenStore checks the store settings of cfg (Dir, AzureURL, AzureContainer,
// the credentials; Name names the scratch folder) and opens the store: it
// creates the local folders and removes what a crash left being built in
// DIR/_tmp/NAME. It does not contact Azure.
func OpenStore(cfg Config) (*Store, error) {
	if err := cfg.ValidateStore(); err != nil {
		return nil, err
	}
	if err := daemon.ValidateID(cfg.Name); err != nil {
		return nil, fmt.Errorf("lake: name: %w", err)
	}
	scratch := scratchName(cfg.Dir, cfg.Name)
	if err := os.MkdirAll(scratch, 0o755); err != nil {
		return nil, fmt.Errorf("lake: create scratch folder: %w", err)
	}
	entries, err := os.ReadDir(scratch)
	if err != nil {
		return nil, fmt.Errorf("lake: read scratch folder: %w", err)
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(scratch, e.Name())); err != nil {
			return nil, fmt.Errorf("lake: remove leftover: %w", err)
		}
	}
	dest, err := openDest(cfg, scratch, nil)
	if err != nil {
		return nil, err
	}
	return &Store{dest: dest, scratch: scratch}, nil
}

// openDest returns the destination cfg names: its local folder, or its
// Azure container with downloads in scratch.
func openDest(cfg Config, scratch string, hook hookFunc) (destination, error) {
	if cfg.AzureURL == "" {
		if err := syncDir(filepath.Dir(filepath.Clean(cfg.Dir))); err != nil {
			return nil, fmt.Errorf("lake: %w", err)
		}
		return newLocalDest(cfg.Dir, hook), nil
	}
	t, err := parseAzureURL(cfg.AzureURL, cfg.AzureContainer)
	if err != nil {
		return nil, fmt.Errorf("lake: azure-url: %w", err)
	}
	client, err := newContainerClient(t, cfg.connectionString(), cfg.accountKey())
	if err != nil {
		return nil, fmt.Errorf("lake: azure: %w", err)
	}
	return &azureDest{client: client, target: t, scratch: scratch, hook: hook}, nil
}

// String describes the store for logs: "folder DIR" or "azure URL".
func (s *Store) String() string { return s.dest.String() }

// Publish stores data as the file name (lake-relative, slash separated,
// ending in .parquet, e.g. from [PartitionDir] and [FileName]), whole and
// durably: it is written to the scratch folder, then committed as the sink
// commits its files (fsync and rename into the partition folder, or one
// conditional upload). A name is never overwritten: Publish returns
// [ErrExists] when it is taken, which a writer that names its files
// deterministically takes as "already done".
func (s *Store) Publish(ctx context.Context, name string, data []byte) error {
	if !strings.HasSuffix(name, fileExt) || path.Clean(name) != name || strings.HasPrefix(name, "/") ||
		strings.HasPrefix(name, "../") || strings.HasPrefix(name, "_") {
		return fmt.Errorf("lake: publish %q: not a lake-relative %s name", name, fileExt)
	}
	f, err := os.CreateTemp(s.scratch, "build-*.tmp")
	if err != nil {
		return fmt.Errorf("lake: publish %s: create file: %w", name, err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = s.dest.commit(ctx, tmp, name)
	}
	if err != nil {
		_ = os.Remove(tmp) // gone already when the commit took it
		if errors.Is(err, errExists) {
			return ErrExists
		}
		return fmt.Errorf("lake: publish %s: %w", name, err)
	}
	return nil
}

// List returns the lake-relative names of the data files (.parquet) whose
// names start with prefix ("": all), in no particular order.
func (s *Store) List(ctx context.Context, prefix string) ([]string, error) {
	files, err := s.dest.list(ctx, prefix)
	if err != nil {
		return nil, fmt.Errorf("lake: %w", err)
	}
	names := make([]string, len(files))
	for i, f := range files {
		names[i] = f.name
	}
	return names, nil
}

// ReadFile returns the content of the data file name.
func (s *Store) ReadFile(ctx context.Context, name string) ([]byte, error) {
	f, size, err := s.dest.open(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("lake: %w", err)
	}
	defer f.Close()
	b := make([]byte, size)
	if _, err := f.ReadAt(b, 0); err != nil && size > 0 {
		return nil, fmt.Errorf("lake: read %s: %w", name, err)
	}
	return b, nil
}

// PartitionDir returns the partition folder of an instant, as the lake
// lays out its readings: date=YYYY-MM-DD/hour=HH/ (UTC, trailing slash).
func PartitionDir(t time.Time) string { return partitionOf(t.UnixMilli()).dir() }

// FileName returns a data file's base name as the lake makes them:
// <writer>-<unix nanoseconds, 19 digits>-<counter, 6 digits>.parquet.
// Names sort in creation order when nanos grows.
func FileName(writer string, nanos int64, counter uint64) string {
	return fmt.Sprintf("%s-%019d-%06d%s", writer, nanos, counter%1_000_000, fileExt)
}
