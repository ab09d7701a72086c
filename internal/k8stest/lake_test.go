package k8stest

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/parquet-go/parquet-go"

	"github.com/drover-telemetry/drover/storagewriter/lake"
)

// lakeKey is the part of a lake row that names the reading.
type lakeKey struct {
	DeviceID string `parquet:"device_id"`
	Seq      int64  `parquet:"seq"`
}

// readLake counts every (device_id, seq) in the lake's Parquet files under
// dir (leaving out files being built, under _-prefixed folders).
func readLake(t *testing.T, dir string) (rows int, keys map[lakeKey]int) {
	t.Helper()
	keys = map[lakeKey]int{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && strings.HasPrefix(d.Name(), "_") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(d.Name(), ".parquet") {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		r := parquet.NewGenericReader[lakeKey](f)
		defer r.Close()
		buf := make([]lakeKey, 1024)
		for {
			n, err := r.Read(buf)
			for _, k := range buf[:n] {
				keys[k]++
				rows++
			}
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
		}
	})
	if err != nil {
		t.Fatalf("read the lake in %s: %v", dir, err)
	}
	return rows, keys
}

var _ = lake.SchemaVersion // the schema readLake reads: storagewriter/lake.Row
