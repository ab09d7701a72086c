package testenv

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
)

// azRoot caches azModuleRoot's answer: the module root does not move while
// tests run.
var azRoot struct {
	once sync.Once
	dir  string
	err  error
}

// azModuleRoot returns the directory holding the module's go.mod, found by
// walking up from the working directory (go test runs a package's tests in
// the package's folder).
func azModuleRoot() (string, error) {
	azRoot.once.Do(func() {
		dir, err := os.Getwd()
		if err != nil {
			azRoot.err = err
			return
		}
		for {
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				azRoot.dir = dir
				return
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				azRoot.err = errors.New("go.mod not found above the working directory")
				return
			}
			dir = parent
		}
	})
	return azRoot.dir, azRoot.err
}
