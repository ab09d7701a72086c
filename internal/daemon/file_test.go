package daemon

import (
	"os"
	"path/filepath"
	"testing"
)

func TestFileChanged(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	stat := func(p string) os.FileInfo {
		t.Helper()
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	if err := os.WriteFile(path, []byte("one"), 0o644); err != nil {
		t.Fatal(err)
	}
	first := stat(path)
	if FileChanged(first, stat(path)) {
		t.Error("the same file, untouched, counts as changed")
	}
	if !FileChanged(nil, first) {
		t.Error("a file never read before does not count as changed")
	}
	// Another file renamed over it, with the same size and time.
	next := filepath.Join(dir, "f.new")
	if err := os.WriteFile(next, []byte("two"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(next, first.ModTime(), first.ModTime()); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(next, path); err != nil {
		t.Fatal(err)
	}
	if !FileChanged(first, stat(path)) {
		t.Error("a file renamed over the watched one, same size and time, does not count as changed")
	}
}
