// Package atomicfile replaces small files so that a crash, kill -9 or power
// loss leaves either the old content or the new one, whole, and never a
// mix, a truncated file or a missing one. drover keeps its state in such
// files: the device registry, the livefeed's clients file, the router's
// subscriber set and deduplication journal, the queues' sequence
// reservation, the lake's compaction journals.
//
// [WriteFile] is the one way to do it:
//
//  1. write the data to a new temporary file in the same folder (rename(2)
//     is atomic only within one file system), named ".NAME.*.tmp" so that
//     it is hidden and never mistaken for the real file;
//  2. fsync the temporary file: its data is on disk before its name is;
//  3. rename it over NAME: readers see the old file or the new one;
//  4. fsync the folder: the rename itself survives a power loss (without
//     it, ext4 and XFS may bring the old name back after a crash, or an
//     empty file).
//
// A crash between 1 and 3 leaves a stale ".NAME.*.tmp" beside an intact
// NAME; nothing reads it, and a later WriteFile leaves it alone (code that
// owns a folder may remove "*.tmp" files when it opens it, as the lake's
// journal recovery does).
package atomicfile

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// hook, when set by a test, is called before each step of WriteFile with
// the step's name ("write", "sync-file", "rename", "sync-dir") and the
// temporary file's path: tests see the order of the steps and can crash the
// process between two of them.
var hook func(step, tmp string)

func step(name, tmp string) {
	if hook != nil {
		hook(name, tmp)
	}
}

// WriteFile replaces the file at path with data, atomically and durably
// (see the package documentation), and gives it the permission bits perm
// exactly (not filtered by the umask). When it returns nil, the new content
// is on disk under path. When it returns an error, path is unchanged (as
// far as the error allows: a failed folder fsync comes after the rename)
// and the temporary file is removed.
func WriteFile(path string, data []byte, perm fs.FileMode) error {
	return write(path, perm, func(f *os.File) error {
		_, err := f.Write(data)
		return err
	})
}

// WriteFunc is [WriteFile] for content too large to build in memory first
// (a follower's registry cache of a million devices): write streams it to
// the temporary file, through a buffer. An error from fn leaves path
// unchanged, as any other failure does.
func WriteFunc(path string, perm fs.FileMode, fn func(w io.Writer) error) error {
	return write(path, perm, func(f *os.File) error {
		bw := bufio.NewWriterSize(f, 256<<10)
		if err := fn(bw); err != nil {
			return err
		}
		return bw.Flush()
	})
}

// write is WriteFile and WriteFunc: content writes the data to the
// temporary file.
func write(path string, perm fs.FileMode, content func(f *os.File) error) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".*.tmp")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	step("write", tmp)
	if err := content(f); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	step("sync-file", tmp)
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write %s: fsync: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: close: %w", path, err)
	}
	step("rename", tmp)
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	step("sync-dir", tmp)
	if err := SyncDir(dir); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// SyncDir fsyncs the folder dir, so that the entries created, renamed or
// removed in it survive a power loss.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open folder %s for fsync: %w", dir, err)
	}
	if err := d.Sync(); err != nil {
		_ = d.Close()
		return fmt.Errorf("fsync folder %s: %w", dir, err)
	}
	if err := d.Close(); err != nil {
		return fmt.Errorf("close folder %s: %w", dir, err)
	}
	return nil
}

// SyncFile fsyncs the file at path (written by someone else, such as a
// Parquet writer), so that its data is on disk before it is renamed into
// place.
func SyncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open %s for fsync: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", path, err)
	}
	return nil
}
