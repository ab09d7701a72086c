// Command influxceiling measures InfluxDB's own ingest ceiling with the
// points drover writes, with no drover in the way (scripts/bench-influx-ceiling.sh
// runs it; docs/performance.md states the result and drover's writer as a
// ratio of it).
//
// It has two modes:
//
//	influxceiling capture -listen 127.0.0.1:PORT -out points.lp
//	    pretends to be InfluxDB (/ping, /query, /api/v2/write) for a drover
//	    storage writer (drover all -sinks influx -influx-url http://127.0.0.1:PORT):
//	    every write's body — drover's own line protocol, from its encoder —
//	    is appended to -out, one batch after the other, until SIGTERM.
//	influxceiling replay -url http://127.0.0.1:8086 -db drover -in points.lp -writers 4 -duration 30s
//	    posts the captured batches to a real InfluxDB, -writers at once, as
//	    fast as it takes them, for -duration; each pass over the batches
//	    shifts every timestamp past the previous pass (new points, not
//	    overwrites) while -max-mb of shifted copies fit in memory, then
//	    cycles through those. Prints a JSON line: points, seconds,
//	    points_per_second, batches, errors.
//
// The replay's own CPU competes with influxd's on a small machine: run it
// with `nice` or on another host to see InfluxDB alone (the script
// reports influxd's CPU per point from /proc either way).
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: influxceiling capture|replay [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "capture":
		err = capture(os.Args[2:])
	case "replay":
		err = replay(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q: capture or replay", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "influxceiling:", err)
		os.Exit(1)
	}
}

// Captured batches are framed as a uvarint length and the body.
func writeBatch(w io.Writer, body []byte) error {
	var n [binary.MaxVarintLen64]byte
	if _, err := w.Write(n[:binary.PutUvarint(n[:], uint64(len(body)))]); err != nil {
		return err
	}
	_, err := w.Write(body)
	return err
}

func capture(args []string) error {
	fs := flag.NewFlagSet("capture", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "`address` to serve the InfluxDB API on")
	out := fs.String("out", "points.lp", "`file` the captured write bodies are appended to")
	_ = fs.Parse(args)
	f, err := os.Create(*out)
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	var mu sync.Mutex
	var batches, bytesIn atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/ping", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("/query", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"results":[{"statement_id":0}]}`))
	})
	mux.HandleFunc("/api/v2/write", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if len(body) > 0 {
			mu.Lock()
			err = writeBatch(bw, body)
			mu.Unlock()
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			batches.Add(1)
			bytesIn.Add(int64(len(body)))
		}
		w.WriteHeader(http.StatusNoContent)
	})
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	fmt.Println(ln.Addr().String()) // the script reads the port
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	mu.Lock()
	defer mu.Unlock()
	if err := bw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "influxceiling: captured %d batches, %d bytes\n", batches.Load(), bytesIn.Load())
	return f.Close()
}

// batch is one write body and its points.
type batch struct {
	body   []byte
	points int
}

func readBatches(path string) ([]batch, int64, int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, 0, 0, err
	}
	var out []batch
	minTS, maxTS := int64(1<<62), int64(0)
	for len(b) > 0 {
		n, k := binary.Uvarint(b)
		if k <= 0 || uint64(len(b)-k) < n {
			return nil, 0, 0, errors.New("captured file is torn")
		}
		body := b[k : k+int(n)]
		b = b[k+int(n):]
		points := 0
		for line := range bytes.SplitSeq(body, []byte("\n")) {
			if len(line) == 0 {
				continue
			}
			points++
			if ts, ok := timestamp(line); ok {
				minTS, maxTS = min(minTS, ts), max(maxTS, ts)
			}
		}
		out = append(out, batch{body: body, points: points})
	}
	if len(out) == 0 {
		return nil, 0, 0, errors.New("no batch captured")
	}
	return out, minTS, maxTS, nil
}

// timestamp returns a line's timestamp: its last space-separated field.
func timestamp(line []byte) (int64, bool) {
	i := bytes.LastIndexByte(line, ' ')
	if i < 0 {
		return 0, false
	}
	ts, err := strconv.ParseInt(string(line[i+1:]), 10, 64)
	return ts, err == nil
}

// shifted returns body with every timestamp moved by d nanoseconds.
func shifted(body []byte, d int64) []byte {
	out := make([]byte, 0, len(body)+len(body)/64)
	for line := range bytes.SplitSeq(body, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		if ts, ok := timestamp(line); ok {
			i := bytes.LastIndexByte(line, ' ')
			out = append(out, line[:i+1]...)
			out = strconv.AppendInt(out, ts+d, 10)
		} else {
			out = append(out, line...)
		}
		out = append(out, '\n')
	}
	return out
}

func replay(args []string) error {
	fs := flag.NewFlagSet("replay", flag.ExitOnError)
	base := fs.String("url", "http://127.0.0.1:8086", "InfluxDB base `URL`")
	db := fs.String("db", "drover", "`database`")
	in := fs.String("in", "points.lp", "captured `file`")
	writers := fs.Int("writers", 4, "writes in flight at once (`number`; drover's -sink-writers defaults to 4)")
	duration := fs.Duration("duration", 30*time.Second, "how long to write (`duration`)")
	maxMB := fs.Int("max-mb", 1024, "memory for timestamp-shifted copies (`MiB`); past it the copies repeat (overwrites)")
	_ = fs.Parse(args)

	batches, minTS, maxTS, err := readBatches(*in)
	if err != nil {
		return err
	}
	span := maxTS - minTS + int64(time.Second)
	var size int64
	for _, b := range batches {
		size += int64(len(b.body))
	}
	passes := min(1000, max(1, int((int64(*maxMB)<<20)/max(size, 1))))
	all := make([]batch, 0, passes*len(batches))
	for p := range passes {
		for _, b := range batches {
			body := b.body
			if p > 0 {
				body = shifted(b.body, int64(p)*span)
			}
			all = append(all, batch{body: body, points: b.points})
		}
	}
	fmt.Fprintf(os.Stderr, "influxceiling: %d batches captured, %d passes with shifted timestamps in memory (%d batches)\n",
		len(batches), passes, len(all))

	target := *base + "/api/v2/write?" + url.Values{"org": {"-"}, "bucket": {*db}, "precision": {"ns"}}.Encode()
	client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: *writers}}
	var next, points, written, errs atomic.Int64
	deadline := time.Now().Add(*duration)
	start := time.Now()
	var wg sync.WaitGroup
	for range *writers {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				b := all[int(next.Add(1)-1)%len(all)]
				resp, err := client.Post(target, "text/plain; charset=utf-8", bytes.NewReader(b.body))
				if err != nil {
					errs.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode/100 != 2 {
					errs.Add(1)
					continue
				}
				points.Add(int64(b.points))
				written.Add(1)
			}
		})
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	return json.NewEncoder(os.Stdout).Encode(map[string]any{
		"points": points.Load(), "seconds": secs, "points_per_second": float64(points.Load()) / secs,
		"batches": written.Load(), "errors": errs.Load(), "writers": *writers,
	})
}
