package lake

import (
	"path"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// fileExt ends every data file's name. Files being built never carry it, so
// a reader's "*.parquet" glob cannot pick up a half-written file.
const fileExt = ".parquet"

// tmpDir is the lake-relative folder of files being built. Spark, Hive and
// DuckDB's hive partitioning skip folders whose name starts with "_", and
// the files in it end in ".tmp", not ".parquet".
const tmpDir = "_tmp"

// namer makes file names that are unique and sort in creation order:
// <writer>-<unix nanoseconds, 19 digits>-<counter, 6 digits>.parquet.
type namer struct {
	writer  string
	counter atomic.Uint64
	now     func() time.Time
}

// next returns a new lake-relative file name in partition p.
func (n *namer) next(p partition) string {
	return p.dir() + FileName(n.writer, n.now().UnixNano(), n.counter.Add(1))
}

// fileInfo is a data file of the lake: its lake-relative name (slash
// separated) and its size in bytes.
type fileInfo struct {
	name string
	size int64
}

// ownFile reports whether name is a data file written by writer, and
// returns its partition. Names are parsed from the end, so that a writer
// name containing '-' ("lake-2") does not claim another's files ("lake").
func ownFile(name, writer string) (partition, bool) {
	p, ok := parsePartition(name)
	if !ok {
		return partition{}, false
	}
	base := path.Base(name)
	stem, ok := strings.CutSuffix(base, fileExt)
	if !ok || path.Dir(name)+"/" != p.dir() {
		return partition{}, false
	}
	i := strings.LastIndexByte(stem, '-')
	if i < 0 {
		return partition{}, false
	}
	if _, err := strconv.ParseUint(stem[i+1:], 10, 64); err != nil {
		return partition{}, false
	}
	stem = stem[:i]
	j := strings.LastIndexByte(stem, '-')
	if j < 0 {
		return partition{}, false
	}
	if _, err := strconv.ParseUint(stem[j+1:], 10, 64); err != nil {
		return partition{}, false
	}
	return p, stem[:j] == writer
}
