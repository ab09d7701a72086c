package queue

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"
)

// diskFullChild runs in a child process: it caps its own file size with
// RLIMIT_FSIZE (the kernel then fails writes past it with EFBIG, as a full
// disk fails them with ENOSPC), appends until the queue refuses, checks the
// refusal, lifts the cap and checks that the queue recovers by itself with
// every acked entry intact.
func diskFullChild() {
	fail := func(format string, a ...any) {
		fmt.Fprintf(os.Stderr, format+"\n", a...)
		os.Exit(6)
	}
	signal.Ignore(syscall.SIGXFSZ)
	dir := os.Getenv("DROVER_QUEUE_DIR")
	q, err := Open(dir, Options{ItemsPerSegment: 1000, RetryInterval: 10 * time.Millisecond}, nil, nil)
	if err != nil {
		fail("open: %v", err)
	}
	ctx := context.Background()
	var old syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old)
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &syscall.Rlimit{Cur: 64 << 10, Max: old.Max}); err != nil {
		fail("setrlimit: %v", err)
	}
	var acked [][]byte
	var refusal error
	for i := 0; i < 10000; i++ {
		p := []byte(fmt.Sprintf("entry-%05d-%s", i, strings.Repeat("x", 200)))
		if _, err := q.Append(ctx, p); err != nil {
			refusal = err
			break
		}
		acked = append(acked, p)
	}
	if refusal == nil {
		fail("file size limit never refused an append")
	}
	if !errors.Is(refusal, ErrDiskFull) || !errors.Is(refusal, ErrStorage) || !Retryable(refusal) {
		fail("refusal %v: want ErrDiskFull", refusal)
	}
	// While the disk is full, appends fail fast (no waiting on the disk).
	t0 := time.Now()
	if _, err := q.Append(ctx, []byte("while full")); err == nil {
		fail("append succeeded while the disk is full")
	} else if d := time.Since(t0); d > time.Second {
		fail("refusal took %v", d)
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		fail("restore rlimit: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		p := []byte("after recovery")
		if _, err := q.Append(ctx, p); err == nil {
			acked = append(acked, p)
			break
		} else if time.Now().After(deadline) {
			fail("queue did not recover after space came back: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	q.Close()
	q, err = Open(dir, Options{ItemsPerSegment: 1000}, nil, nil)
	if err != nil {
		fail("reopen: %v", err)
	}
	var got [][]byte
	for {
		b, err := q.TryRead(1 << 20)
		if err != nil {
			fail("read: %v", err)
		}
		if len(b.Entries) == 0 {
			break
		}
		for _, e := range b.Entries {
			got = append(got, e.Data)
		}
	}
	// Every acked entry, in order; an entry whose append failed may be
	// there too (its write landed, its sync did not): at least once.
	j := 0
	for _, g := range got {
		if j < len(acked) && string(g) == string(acked[j]) {
			j++
		}
	}
	if j != len(acked) {
		fail("after recovery: %d of %d acked entries found in order", j, len(acked))
	}
	fmt.Printf("OK %d acked, refused with: %v\n", len(acked), refusal)
}

func TestDiskFull(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"=diskfull", "DROVER_QUEUE_DIR="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "OK ") {
		t.Fatalf("disk-full child: %v\n%s", err, out)
	}
	t.Log(strings.TrimSpace(string(out)))
}
