package daemon

import (
	"os"
	"runtime"
	"testing"
)

func TestEnsureMinProcs(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	t.Setenv("GOMAXPROCS", "") // set, so restored after; unset below
	if err := unsetenv("GOMAXPROCS"); err != nil {
		t.Fatal(err)
	}
	runtime.GOMAXPROCS(1)
	if before, after := EnsureMinProcs(); before != 1 || after != MinProcs || runtime.GOMAXPROCS(0) != MinProcs {
		t.Fatalf("one P: before %d after %d, GOMAXPROCS %d; want raised to %d", before, after, runtime.GOMAXPROCS(0), MinProcs)
	}
	runtime.GOMAXPROCS(4)
	if _, after := EnsureMinProcs(); after != 4 {
		t.Fatalf("four Ps lowered to %d", after)
	}
	// An operator's choice stands, even of one.
	t.Setenv("GOMAXPROCS", "1")
	runtime.GOMAXPROCS(1)
	if _, after := EnsureMinProcs(); after != 1 || runtime.GOMAXPROCS(0) != 1 {
		t.Fatalf("GOMAXPROCS=1 in the environment overridden: %d", runtime.GOMAXPROCS(0))
	}
}

func unsetenv(k string) error { return os.Unsetenv(k) }
