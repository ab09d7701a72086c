// Command ackcheck checks, per device, that every reading a simulated fleet saw acked is in a
// stopped router's queue: the load runs' "nothing acked lost". Each `drover sim -acked FILE`
// writes every device's highest acked seq; the simulator's seqs are contiguous from 1 (or
// -first-seq), so each (device, seq ≤ acked) must be stored. The router must have run with
// -fixed-subscribers and none listed, so that its main queue holds everything (a durable
// subscriber's queue under subs/ is read too, should one have registered).
//
//	go run ./internal/bench/ackcheck -queue ROUTER_QUEUE_DIR -acked 'OUT/acked-*.json' [-first-seq 1]
//
// It prints one line (devices, readings acked, stored, duplicates, missing) and, when readings
// are missing, the first devices and seqs; its exit status is 1 then.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"google.golang.org/protobuf/proto"

	"github.com/drover-telemetry/drover/queue"
	"github.com/drover-telemetry/drover/telemetry"
)

type key struct {
	device string
	seq    uint64
}

func main() {
	dir := flag.String("queue", "", "`directory` of a stopped router's queue")
	pattern := flag.String("acked", "", "glob `pattern` of the -acked files of drover sim")
	first := flag.Uint64("first-seq", 1, "the fleets' -first-seq (`number`)")
	flag.Parse()
	if *dir == "" || *pattern == "" {
		fmt.Fprintln(os.Stderr, "ackcheck: -queue and -acked are required")
		os.Exit(2)
	}
	if err := run(*dir, *pattern, *first); err != nil {
		fmt.Fprintln(os.Stderr, "ackcheck:", err)
		os.Exit(1)
	}
}

func run(dir, pattern string, first uint64) error {
	files, err := filepath.Glob(pattern)
	if err != nil || len(files) == 0 {
		return fmt.Errorf("no acked file matches %q", pattern)
	}
	acked := map[string]uint64{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		var m map[string]uint64
		if err := json.Unmarshal(b, &m); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		for d, s := range m {
			acked[d] = max(acked[d], s)
		}
	}
	count := map[key]int{}
	if err := readQueue(dir, func(data []byte) error {
		var b telemetry.Batch
		if err := proto.Unmarshal(data, &b); err != nil {
			return fmt.Errorf("a router queue entry is not a Batch: %w", err)
		}
		for _, r := range b.GetRecords() {
			count[key{r.GetDeviceId(), r.GetReading().GetSeq()}]++
		}
		return nil
	}); err != nil {
		return err
	}
	subs, _ := os.ReadDir(filepath.Join(dir, "subs"))
	for _, s := range subs {
		if !s.IsDir() {
			continue
		}
		if err := readQueue(filepath.Join(dir, "subs", s.Name()), func(data []byte) error {
			var pb telemetry.PublishBatch
			if err := proto.Unmarshal(data, &pb); err != nil {
				return fmt.Errorf("a subscriber queue entry is not a PublishBatch: %w", err)
			}
			for _, r := range pb.GetRecords() {
				count[key{r.GetRecord().GetDeviceId(), r.GetRecord().GetReading().GetSeq()}]++
			}
			return nil
		}); err != nil {
			return err
		}
	}
	var total, missingN, dups int
	missing := map[string][]uint64{}
	for d, hi := range acked {
		for seq := first; seq <= hi; seq++ {
			total++
			if count[key{d, seq}] == 0 {
				missingN++
				if len(missing[d]) < 5 {
					missing[d] = append(missing[d], seq)
				}
			}
		}
	}
	for _, n := range count {
		if n > 1 {
			dups += n - 1
		}
	}
	fmt.Printf("ackcheck: %d devices, %d readings acked, %d distinct readings stored, %d duplicate copies, %d acked and missing\n",
		len(acked), total, len(count), dups, missingN)
	if missingN == 0 {
		return nil
	}
	devs := make([]string, 0, len(missing))
	for d := range missing {
		devs = append(devs, d)
	}
	sort.Strings(devs)
	for i, d := range devs {
		if i == 20 {
			fmt.Printf("... and %d more devices\n", len(devs)-i)
			break
		}
		fmt.Printf("missing: %s seqs %v (acked up to %d)\n", d, missing[d], acked[d])
	}
	return fmt.Errorf("%d acked readings of %d devices are not stored", missingN, len(missing))
}

// readQueue calls fn with every entry of the queue in dir, removing nothing.
func readQueue(dir string, fn func([]byte) error) error {
	q, err := queue.Open(dir, queue.Options{Name: "ackcheck", MaxBytes: -1}, nil, nil)
	if err != nil {
		return fmt.Errorf("open queue %s: %w", dir, err)
	}
	defer q.Close()
	for {
		b, err := q.TryRead(4 << 20)
		if err != nil {
			return fmt.Errorf("read queue %s: %w", dir, err)
		}
		if len(b.Entries) == 0 {
			return nil
		}
		for _, e := range b.Entries {
			if err := fn(e.Data); err != nil {
				return err
			}
		}
	}
}
