package clusterlink

import (
	"os"
	"path/filepath"
	"testing"
)

// TestKeyFilePermissions: a key file readable by others is warned about;
// one readable by the process's own group is not, which is what a
// Kubernetes Secret becomes in a pod with an fsGroup (0440 root:fsGroup).
func TestKeyFilePermissions(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "key")
	if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		mode   os.FileMode
		others bool
	}{
		{0o400, false},
		{0o600, false},
		{0o440, false}, // the file's group is ours (we created it)
		{0o640, false},
		{0o444, true},
		{0o604, true},
	} {
		if err := os.Chmod(path, c.mode); err != nil {
			t.Fatal(err)
		}
		info, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := readableByOthers(info); got != c.others {
			t.Errorf("mode %v, group ours: readableByOthers = %v; want %v", c.mode, got, c.others)
		}
	}
	if os.Geteuid() == 0 { // a group the process is not in needs root to set
		if err := os.Chown(path, -1, 54321); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, 0o440); err != nil {
			t.Fatal(err)
		}
		info, _ := os.Stat(path)
		if !readableByOthers(info) {
			t.Error("0440 with a foreign group: not reported readable by others")
		}
	}
}
