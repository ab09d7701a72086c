package livefeed

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// BenchmarkLoopbackWrite: what one write(2) of a message to a client's
// socket costs the writer on loopback, by message size, with the readers
// in another process on another CPU (this test binary run again as the
// reader, pinned to the last CPU; the writer pinned to the first). It is
// the floor under the livefeed's fan-out at 500 clients, where write(2) is
// three fifths of its CPU (docs/performance.md, "The livefeed's write per
// client"): on loopback the sender's write also runs the receiver's TCP
// input and wakes the reader, so a write costs about the same whatever it
// carries, and what the fan-out can save is writes, not bytes.
//
//	go test -run '^$' -bench BenchmarkLoopbackWrite -benchtime 100000x ./livefeed/
func BenchmarkLoopbackWrite(b *testing.B) {
	if runtime.NumCPU() < 2 {
		b.Skip("needs two CPUs: the readers on one, the writer on another")
	}
	for _, c := range []struct{ conns, size int }{{1, 300}, {500, 300}, {500, 3000}, {500, 7500}} {
		b.Run(fmt.Sprintf("conns=%d/bytes=%d", c.conns, c.size), func(b *testing.B) {
			cs := loopbackReaders(b, c.conns)
			var set unix.CPUSet
			set.Set(0)
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			if err := unix.SchedSetaffinity(0, &set); err != nil {
				b.Fatalf("pin the writer: %v", err)
			}
			msg := make([]byte, c.size)
			b.SetBytes(int64(c.size))
			b.ResetTimer()
			for i := range b.N {
				if _, err := cs[i%len(cs)].Write(msg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestMain runs the tests, or is BenchmarkLoopbackWrite's reader process.
func TestMain(m *testing.M) {
	if cpu := os.Getenv(loopbackReaderEnv); cpu != "" {
		runLoopbackReader(cpu)
		return
	}
	os.Exit(m.Run())
}

// loopbackReaderEnv makes this test binary a reader (TestMain's check).
const loopbackReaderEnv = "DROVER_LOOPBACK_READER"

// loopbackReaders starts a reader process and opens n connections to it.
func loopbackReaders(b *testing.B, n int) []net.Conn {
	cmd := exec.Command(os.Args[0], "-test.run", "^$")
	cmd.Env = append(os.Environ(), loopbackReaderEnv+"="+strconv.Itoa(runtime.NumCPU()-1))
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatalf("start the reader: %v", err)
	}
	b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		b.Fatalf("the reader's address: %v", err)
	}
	cs := make([]net.Conn, n)
	for i := range cs {
		if cs[i], err = net.Dial("tcp", addr[:len(addr)-1]); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { cs[i].Close() })
	}
	return cs
}

// runLoopbackReader is the reader process: pinned to the CPU in cpu, it
// prints its address and reads every connection until it is killed.
func runLoopbackReader(cpu string) {
	n, err := strconv.Atoi(cpu)
	if err != nil {
		fmt.Fprintln(os.Stderr, "reader: cpu:", err)
		os.Exit(2)
	}
	// Every thread of the process, and so every thread they start.
	var set unix.CPUSet
	set.Set(n)
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		fmt.Fprintln(os.Stderr, "reader:", err)
		os.Exit(2)
	}
	for _, t := range tasks {
		tid, _ := strconv.Atoi(t.Name())
		if err := unix.SchedSetaffinity(tid, &set); err != nil {
			fmt.Fprintln(os.Stderr, "reader: pin:", err)
			os.Exit(2)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "reader:", err)
		os.Exit(2)
	}
	fmt.Println(ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			os.Exit(0)
		}
		go io.Copy(io.Discard, c)
	}
}
