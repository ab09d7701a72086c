package lake

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"

	"github.com/drover-telemetry/drover/internal/atomicfile"
)

// destination is where finished files go: a local folder or an Azure Blob
// container. Files are built in a local scratch folder first and handed
// over closed, so a destination only ever publishes complete files.
type destination interface {
	// commit publishes the complete file at tmpPath under the lake-relative
	// name, durably and atomically: a reader sees the whole file or none of
	// it, and once commit returned nil the file survives a crash. The file
	// at tmpPath is consumed on success. It returns errExists, and leaves
	// tmpPath in place, when name is taken.
	commit(ctx context.Context, tmpPath, name string) error
	// list returns the data files (names ending in .parquet) whose
	// lake-relative names start with prefix; "" lists the whole lake.
	list(ctx context.Context, prefix string) ([]fileInfo, error)
	// open returns a file for reading and its size; closing it releases
	// whatever open took (a downloaded copy).
	open(ctx context.Context, name string) (readAtCloser, int64, error)
	// remove deletes files, durably; a file already gone is not an error.
	remove(ctx context.Context, names []string) error
	// String describes the destination for logs.
	String() string
}

// readAtCloser is a file open for reading.
type readAtCloser interface {
	io.ReaderAt
	io.Closer
}

// errExists is what commit returns when the name is taken.
var errExists = errors.New("file name already taken")

// hookFunc is a failpoint: called with the name of a point on the
// durability path (see the failpoint constants), in tests only.
type hookFunc func(point string)

// Failpoints on the durability path, in the order a local commit passes
// them.
const (
	fpBeforeSync   = "before-sync"   // temp file written and closed, not yet fsynced
	fpBeforeRename = "before-rename" // temp file fsynced, final name not yet taken
	fpAfterRename  = "after-rename"  // final name taken, folder not yet fsynced
	fpBeforeRemove = "compact-before-remove"
)

// localDest is a lake in a local folder.
type localDest struct {
	root string
	hook hookFunc

	mu   sync.Mutex
	dirs map[string]bool // partition folders known to exist durably
}

func newLocalDest(root string, hook hookFunc) *localDest {
	return &localDest{root: root, hook: hook, dirs: make(map[string]bool)}
}

func (d *localDest) String() string { return "folder " + d.root }

func (d *localDest) fire(point string) {
	if d.hook != nil {
		d.hook(point)
	}
}

// commit fsyncs the temp file, renames it into its partition folder (which
// it creates, fsyncing each parent it adds an entry to) and fsyncs that
// folder. rename(2) is atomic: the final name shows the complete file or
// nothing. It is internal/atomicfile's sequence for a file the Parquet
// writer streamed into the scratch folder, with failpoints between the
// steps and a refusal to replace an existing file (errExists).
func (d *localDest) commit(ctx context.Context, tmpPath, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.fire(fpBeforeSync)
	if err := syncFile(tmpPath); err != nil {
		return err
	}
	final := filepath.Join(d.root, filepath.FromSlash(name))
	dir := filepath.Dir(final)
	if err := d.ensureDir(dir); err != nil {
		return err
	}
	if _, err := os.Lstat(final); err == nil {
		return errExists
	}
	d.fire(fpBeforeRename)
	if err := os.Rename(tmpPath, final); err != nil {
		return fmt.Errorf("rename into place: %w", err)
	}
	d.fire(fpAfterRename)
	if err := syncDir(dir); err != nil {
		return err
	}
	return nil
}

// ensureDir creates dir and any missing parent below the root, fsyncing the
// parent of every folder it creates, so that the folder survives a crash as
// well as the files renamed into it.
func (d *localDest) ensureDir(dir string) error {
	d.mu.Lock()
	known := d.dirs[dir]
	d.mu.Unlock()
	if known {
		return nil
	}
	rel, err := filepath.Rel(d.root, dir)
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return fmt.Errorf("folder %s outside the lake %s", dir, d.root)
	}
	cur := d.root
	for _, part := range strings.Split(rel, string(filepath.Separator)) {
		parent := cur
		cur = filepath.Join(cur, part)
		err := os.Mkdir(cur, 0o755)
		switch {
		case err == nil:
			if err := syncDir(parent); err != nil {
				return err
			}
		case errors.Is(err, fs.ErrExist):
		default:
			return fmt.Errorf("create folder: %w", err)
		}
	}
	d.mu.Lock()
	d.dirs[dir] = true
	d.mu.Unlock()
	return nil
}

func (d *localDest) list(ctx context.Context, prefix string) ([]fileInfo, error) {
	// Start the walk at the deepest folder the prefix names.
	start := d.root
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		start = filepath.Join(d.root, filepath.FromSlash(prefix[:i]))
	}
	var files []fileInfo
	err := filepath.WalkDir(start, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed under us, or the prefix names no folder yet
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		name := e.Name()
		if p != start && (strings.HasPrefix(name, "_") || strings.HasPrefix(name, ".")) {
			if e.IsDir() {
				return filepath.SkipDir // _tmp and anything hidden: not data
			}
			return nil
		}
		if e.IsDir() || !strings.HasSuffix(name, fileExt) {
			return nil
		}
		rel, err := filepath.Rel(d.root, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if !strings.HasPrefix(rel, prefix) {
			return nil
		}
		info, err := e.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		files = append(files, fileInfo{name: rel, size: info.Size()})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", path.Join(d.root, prefix), err)
	}
	return files, nil
}

func (d *localDest) open(_ context.Context, name string) (readAtCloser, int64, error) {
	f, err := os.Open(filepath.Join(d.root, filepath.FromSlash(name)))
	if err != nil {
		return nil, 0, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, st.Size(), nil
}

func (d *localDest) remove(_ context.Context, names []string) error {
	dirs := make(map[string]bool)
	for _, name := range names {
		p := filepath.Join(d.root, filepath.FromSlash(name))
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove: %w", err)
		}
		dirs[filepath.Dir(p)] = true
	}
	for dir := range dirs {
		if err := syncDir(dir); err != nil {
			return err
		}
	}
	return nil
}

// syncFile fsyncs the file at p.
func syncFile(p string) error { return atomicfile.SyncFile(p) }

// syncDir fsyncs a folder, making the entries added to or removed from it
// durable.
func syncDir(dir string) error { return atomicfile.SyncDir(dir) }
