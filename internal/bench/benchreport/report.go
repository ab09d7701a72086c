package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/drover-telemetry/drover/internal/sim"
)

// The markers around the generated section of the document.
const (
	beginMarker = "<!-- bench-e2e:begin -->"
	endMarker   = "<!-- bench-e2e:end -->"
)

// Image names under the -img dir, as the document links them.
const (
	throughputPNG = "bench-e2e-throughput.png"
	latencyPNG    = "bench-e2e-latency.png"
)

// runInfo is run.json, written by bench-e2e.sh.
type runInfo struct {
	Date             string   `json:"date"`
	Commit           string   `json:"commit"`
	Duration         string   `json:"duration"`
	PipelineDuration string   `json:"pipeline_duration"`
	Cores            int      `json:"cores"`
	Scenarios        []string `json:"scenarios"`
	NATSServer       string   `json:"nats_server"`
	// LoadavgStart and LoadavgEnd are the machine's 1-minute load average around the run.
	LoadavgStart float64 `json:"loadavg_start"`
	LoadavgEnd   float64 `json:"loadavg_end"`
	// SimCPUs and ServerCPUs are the CPU lists the load generators and the servers were pinned
	// to (taskset), "" when not pinned.
	SimCPUs    string `json:"sim_cpus"`
	ServerCPUs string `json:"server_cpus"`
}

// simRun is a scenario driven by drover sim: its summary and timeline.
type simRun struct {
	Summary  sim.Summary
	Timeline []sim.TimelinePoint
}

// pipelineSummary is bench-pipeline.sh's summary.json.
type pipelineSummary struct {
	LoadSeconds     float64            `json:"load_seconds"`
	InfluxPerSecond float64            `json:"influx_per_second"`
	LakePerSecond   float64            `json:"lake_per_second"`
	BacklogEnd      map[string]float64 `json:"backlog_end"`
	Drained         bool               `json:"drained"`
	DrainSeconds    float64            `json:"drain_seconds"`
	InfluxWritten   float64            `json:"influx_written"`
	LakeWritten     float64            `json:"lake_written"`
}

// dist is a latency distribution in milliseconds, as livelat writes it.
type dist struct {
	Count uint64  `json:"count"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p999"`
	Max   float64 `json:"max"`
}

// liveSummary is livelat's summary (bench-live.sh's live.json).
type liveSummary struct {
	Seconds        float64 `json:"seconds"`
	Updates        uint64  `json:"updates"`
	Vehicles       int     `json:"vehicles"`
	UpdatesPerSec  float64 `json:"updates_per_second"`
	Disconnected   bool    `json:"disconnected"`
	FromDeviceMs   dist    `json:"from_device_ms"`
	FromFrontendMs dist    `json:"from_frontend_ms"`

	// Clients is how many clients followed every vehicle (livelat -clients; 0 in older runs: 1),
	// OthersDisconnected how many of those that only read were disconnected.
	Clients            int `json:"clients"`
	OthersDisconnected int `json:"others_disconnected"`
}

// livePoint is a line of livelat's timeline.
type livePoint struct {
	T     float64 `json:"t"`
	P50Ms float64 `json:"p50_ms"`
	P99Ms float64 `json:"p99_ms"`
}

// natsSummary is natspeer's summary.
type natsSummary struct {
	Label                  string  `json:"label"`
	Publishers             int     `json:"publishers"`
	Connected              int     `json:"connected"`
	Size                   int     `json:"message_bytes"`
	Readings               int     `json:"readings_per_message"`
	Window                 int     `json:"window"`
	Seconds                float64 `json:"seconds"`
	Acked                  uint64  `json:"acked"`
	Errors                 uint64  `json:"errors"`
	AckedPerSecond         float64 `json:"acked_per_second"`
	AckedReadingsPerSecond float64 `json:"acked_readings_per_second"`
	AckLatencyMs           dist    `json:"ack_latency_ms"`
}

// natsPoint is a line of natspeer's timeline.
type natsPoint struct {
	T                      float64 `json:"t"`
	AckedReadingsPerSecond float64 `json:"acked_readings_per_second"`
}

// natsRun is one natspeer run.
type natsRun struct {
	Summary  natsSummary
	Timeline []natsPoint
}

// results is everything a bench-e2e run left; a nil field is a scenario not run.
type results struct {
	Run                  runInfo
	Throughput, Latency  *simRun
	Pipeline             *simRun
	PipelineSum          *pipelineSummary
	Live                 *liveSummary
	LiveSim              *simRun
	LiveTimeline         []livePoint
	Idle                 map[string]float64
	NATSAlways, NATSDflt *natsRun
	// Procs is each scenario's procstats.json, by scenario dir.
	Procs map[string]*procStats
}

// readJSON decodes file into v; found is false when the file does not exist.
func readJSON(file string, v any) (found bool, err error) {
	b, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s: %w", file, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return false, fmt.Errorf("decode %s: %w", file, err)
	}
	return true, nil
}

// readJSONL decodes every line of file into a T.
func readJSONL[T any](file string) ([]T, error) {
	f, err := os.Open(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", file, err)
	}
	defer f.Close()
	var out []T
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var v T
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			return nil, fmt.Errorf("decode %s line %d: %w", file, n, err)
		}
		out = append(out, v)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	return out, nil
}

// latencyResult is the ack latency of a latency run: the steady state after the warm-up when the
// run had one, then the whole run with the connect burst.
func latencyResult(s sim.Summary) string {
	all := s.AckLatencyMs
	if st := s.AckLatencySteadyMs; st != nil {
		return fmt.Sprintf("after the first %gs (connects): p50 **%s**, p90 %s, p99 **%s**, max %s; whole run: p99 %s, max %s (%s acked/s)",
			s.WarmupSeconds, msf(st.P50), msf(st.P90), msf(st.P99), msf(st.Max), msf(all.P99), msf(all.Max), num(s.AckedPerSecond))
	}
	return fmt.Sprintf("p50 **%s**, p90 %s, p99 **%s**, max %s (%s acked/s)", msf(all.P50), msf(all.P90),
		msf(all.P99), msf(all.Max), num(s.AckedPerSecond))
}

func loadSim(dir string) (*simRun, error) {
	var r simRun
	found, err := readJSON(filepath.Join(dir, "sim.json"), &r.Summary)
	if err != nil || !found {
		return nil, err
	}
	if r.Timeline, err = readJSONL[sim.TimelinePoint](filepath.Join(dir, "timeline.jsonl")); err != nil {
		return nil, err
	}
	return &r, nil
}

func loadNATS(dir string) (*natsRun, error) {
	var r natsRun
	found, err := readJSON(filepath.Join(dir, "nats.json"), &r.Summary)
	if err != nil || !found {
		return nil, err
	}
	if r.Timeline, err = readJSONL[natsPoint](filepath.Join(dir, "timeline.jsonl")); err != nil {
		return nil, err
	}
	return &r, nil
}

// loadIdle reads idle.txt's first line, key=value pairs (bench-ingest.sh idle).
func loadIdle(file string) (map[string]float64, error) {
	b, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	m := map[string]float64{}
	for _, kv := range strings.Fields(line) {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", file, kv, err)
		}
		m[k] = f
	}
	if m["connections"] <= 0 {
		return nil, fmt.Errorf("%s: no connections= in %q", file, line)
	}
	return m, nil
}

// load reads a bench-e2e results dir.
func load(dir string) (*results, error) {
	r := &results{}
	found, err := readJSON(filepath.Join(dir, "run.json"), &r.Run)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("%s: no run.json (not a bench-e2e.sh results dir?)", dir)
	}
	if r.Throughput, err = loadSim(filepath.Join(dir, "throughput")); err != nil {
		return nil, err
	}
	if r.Latency, err = loadSim(filepath.Join(dir, "latency")); err != nil {
		return nil, err
	}
	if r.Pipeline, err = loadSim(filepath.Join(dir, "pipeline")); err != nil {
		return nil, err
	}
	var ps pipelineSummary
	if found, err := readJSON(filepath.Join(dir, "pipeline", "summary.json"), &ps); err != nil {
		return nil, err
	} else if found {
		r.PipelineSum = &ps
	}
	var ls liveSummary
	if found, err := readJSON(filepath.Join(dir, "live", "live.json"), &ls); err != nil {
		return nil, err
	} else if found {
		r.Live = &ls
		if r.LiveSim, err = loadSim(filepath.Join(dir, "live")); err != nil {
			return nil, err
		}
		if r.LiveTimeline, err = readJSONL[livePoint](filepath.Join(dir, "live", "live-timeline.jsonl")); err != nil {
			return nil, err
		}
	}
	if r.Idle, err = loadIdle(filepath.Join(dir, "idle", "idle.txt")); err != nil {
		return nil, err
	}
	if r.NATSAlways, err = loadNATS(filepath.Join(dir, "nats-always")); err != nil {
		return nil, err
	}
	if r.NATSDflt, err = loadNATS(filepath.Join(dir, "nats-default")); err != nil {
		return nil, err
	}
	if r.Procs, err = loadProcStats(dir); err != nil {
		return nil, err
	}
	return r, nil
}

// num formats v with thousands separators and no decimals.
func num(v float64) string {
	s := strconv.FormatInt(int64(math.Round(v)), 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// msf formats milliseconds with at most three significant decimals.
func msf(v float64) string {
	switch {
	case v >= 100:
		return num(v) + " ms"
	case v >= 10:
		return strconv.FormatFloat(math.Round(v*10)/10, 'f', -1, 64) + " ms"
	default:
		return strconv.FormatFloat(math.Round(v*100)/100, 'f', -1, 64) + " ms"
	}
}

const notRun = "not run"

// tables returns the generated markdown section, without the markers.
func tables(r *results) string {
	var b strings.Builder
	ru := r.Run
	fmt.Fprintf(&b, "*Generated by `make bench-e2e` (scripts/bench-e2e.sh, internal/bench/benchreport) on %s, commit %s, %d cores, "+
		"1-minute load average %.1f at the start and %.1f at the end (the benchmark's own processes count in it; "+
		"the machine is shared, and more than a few means other work ran alongside): "+
		"DURATION=%s per scenario, %s for the end-to-end run; %s. Figures to compare within this run, not targets.*\n\n",
		ru.Date, ru.Commit, ru.Cores, ru.LoadavgStart, ru.LoadavgEnd, ru.Duration, ru.PipelineDuration, pinning(ru))

	b.WriteString("| scenario | what it measures | result |\n| --- | --- | --- |\n")
	row := func(name, what, result string) { fmt.Fprintf(&b, "| %s | %s | %s |\n", name, what, result) }
	if t := r.Throughput; t != nil {
		s := t.Summary
		row("ingest throughput", fmt.Sprintf("readings durably acked (frontend queue fsynced) through one frontend, %s devices, frames of %d, window %d",
			num(float64(s.Config.Devices)), s.Config.FrameReadings, s.Config.Window),
			fmt.Sprintf("**%s readings/s** (%s in %.1f s), ack p50 %s, p99 %s", num(s.AckedPerSecond), num(float64(s.Acked)), s.Seconds,
				msf(s.AckLatencyMs.P50), msf(s.AckLatencyMs.P99)))
	} else {
		row("ingest throughput", "readings durably acked through one frontend", notRun)
	}
	if p := r.Pipeline; p != nil {
		s := p.Summary
		res := fmt.Sprintf("offered %s/s, acked %s/s (ack p99 %s)", num(float64(s.Config.Devices)*s.Config.Rate), num(s.AckedPerSecond), msf(s.AckLatencyMs.P99))
		if ps := r.PipelineSum; ps != nil {
			drained := "not within the drain timeout"
			if ps.Drained {
				drained = fmt.Sprintf("%.0f s after the load", ps.DrainSeconds)
			}
			res += fmt.Sprintf("; written during the load: lake **%s/s**, InfluxDB **%s/s**; backlog back to zero: %s",
				num(ps.LakePerSecond), num(ps.InfluxPerSecond), drained)
		}
		row("end to end", fmt.Sprintf("sim → frontend → router → storage writers → InfluxDB 1.8 and the Parquet lake, %s devices × %g readings/s", num(float64(s.Config.Devices)), s.Config.Rate), res)
	} else {
		row("end to end", "sim → frontend → router → InfluxDB and the lake", notRun)
	}
	if l := r.Latency; l != nil {
		s := l.Summary
		row("ack latency", fmt.Sprintf("device's view, frame written → ack read, %s devices × %g readings/s, one reading a frame", num(float64(s.Config.Devices)), s.Config.Rate),
			latencyResult(s)+ackViews(r.Procs["latency"]))
	} else {
		row("ack latency", "device's view at 10,000 readings/s", notRun)
	}
	if l := r.Live; l != nil {
		d, f := l.FromDeviceMs, l.FromFrontendMs
		res := fmt.Sprintf("from device time p50 **%s**, p99 **%s**, max %s; from the frontend's receipt p50 %s, p99 %s (%s updates of %s vehicles)",
			msf(d.P50), msf(d.P99), msf(d.Max), msf(f.P50), msf(f.P99), num(float64(l.Updates)), num(float64(l.Vehicles)))
		if l.Disconnected {
			res += "; **the client was disconnected**"
		}
		if l.Clients > 1 {
			res += fmt.Sprintf("; %s clients following every vehicle", num(float64(l.Clients)))
			if l.OthersDisconnected > 0 {
				res += fmt.Sprintf(", **%d of them disconnected**", l.OthersDisconnected)
			}
		}
		fleet := ""
		if ls := r.LiveSim; ls != nil {
			fleet = fmt.Sprintf(", %s vehicles × %g readings/s", num(float64(ls.Summary.Config.Devices)), ls.Summary.Config.Rate)
		}
		row("live latency", "a reading's device timestamp → its update read by a WebSocket client of the livefeed (all vehicles)"+fleet, res)
	} else {
		row("live latency", "device timestamp → livefeed WebSocket client", notRun)
	}
	if m := r.Idle; m != nil {
		c := m["connections"]
		per := (m["heap_after"] - m["heap_before"] + m["stack"]) / c / 1024
		row("idle connections", fmt.Sprintf("frontend heap + goroutine stacks per idle device connection, %s connections", num(c)),
			fmt.Sprintf("**%.1f KiB** per connection (%s goroutines, RSS %s MiB)", per, num(m["goroutines"]), num(m["rss"]/(1<<20))))
	} else {
		row("idle connections", "frontend memory per idle device connection", notRun)
	}

	b.WriteString(perReadingTable(r.Procs))

	b.WriteString("\n**Peer: NATS JetStream.** ")
	a, d := r.NATSAlways, r.NATSDflt
	var ref *natsSummary
	for _, n := range []*natsRun{a, d} {
		if n != nil {
			ref = &n.Summary
			break
		}
	}
	if ref == nil {
		b.WriteString("Not run.\n")
		return b.String()
	}
	fmt.Fprintf(&b, "nats-server %s on loopback, one file-storage stream (one replica); %s publishing connections "+
		"(as many as the devices above), each with at most %d publishes awaiting their PubAck, messages of %s bytes "+
		"(the measured size of the simulator's 50-reading frames, bytes_sent / frames_sent of the ingest run), each "+
		"counted as %d readings once acknowledged. `sync_interval: always` fsyncs before each PubAck, as drover's queues do; "+
		"the default syncs every 2 minutes (a PubAck then means written, not on disk).\n\n",
		r.Run.NATSServer, num(float64(ref.Publishers)), ref.Window, num(float64(ref.Size)), ref.Readings)
	b.WriteString("| system | durability of an ack | readings/s acked | acks/s | ack p50 | ack p99 | drover ingest ÷ this |\n| --- | --- | ---: | ---: | ---: | ---: | ---: |\n")
	var droverRate float64
	if t := r.Throughput; t != nil {
		s := t.Summary
		droverRate = s.AckedPerSecond
		frames := s.AckedPerSecond / float64(max(s.Config.FrameReadings, 1))
		fmt.Fprintf(&b, "| drover (ingest throughput above) | fsync (group commit) | **%s** | %s frames | %s | %s | 1 |\n",
			num(s.AckedPerSecond), num(frames), msf(s.AckLatencyMs.P50), msf(s.AckLatencyMs.P99))
	}
	for _, n := range []struct {
		run  *natsRun
		name string
		dur  string
	}{{a, "NATS JetStream, `sync_interval: always`", "fsync"}, {d, "NATS JetStream, default sync", "write, fsync every 2 min"}} {
		if n.run == nil {
			fmt.Fprintf(&b, "| %s | %s | %s | | | | |\n", n.name, n.dur, notRun)
			continue
		}
		s := n.run.Summary
		ratio := "–"
		if droverRate > 0 && s.AckedReadingsPerSecond > 0 {
			ratio = fmt.Sprintf("**%s×**", strconv.FormatFloat(droverRate/s.AckedReadingsPerSecond, 'g', 3, 64))
		}
		errs := ""
		if s.Errors > 0 || s.Connected < s.Publishers {
			errs = fmt.Sprintf(" (%d errors, %d of %d connected)", s.Errors, s.Connected, s.Publishers)
		}
		fmt.Fprintf(&b, "| %s | %s | **%s**%s | %s | %s | %s | %s |\n", n.name, n.dur, num(s.AckedReadingsPerSecond), errs,
			num(s.AckedPerSecond), msf(s.AckLatencyMs.P50), msf(s.AckLatencyMs.P99), ratio)
	}
	fmt.Fprintf(&b, "\n![Throughput over time](img/%s)\n\n![Latency over time](img/%s)\n", throughputPNG, latencyPNG)
	return b.String()
}

// replaceSection returns doc with the text between the markers replaced by section; the rest is
// kept byte for byte.
func replaceSection(doc []byte, section string) ([]byte, error) {
	i := bytes.Index(doc, []byte(beginMarker))
	j := bytes.Index(doc, []byte(endMarker))
	if i < 0 || j < 0 || j < i {
		return nil, fmt.Errorf("the markers %s and %s, in that order, are not in the document", beginMarker, endMarker)
	}
	var out bytes.Buffer
	out.Write(doc[:i+len(beginMarker)])
	out.WriteString("\n")
	out.WriteString(section)
	out.Write(doc[j:])
	return out.Bytes(), nil
}

// generate writes the document's section and the plots.
func generate(resultsDir, docFile, imgDir string) error {
	r, err := load(resultsDir)
	if err != nil {
		return err
	}
	doc, err := os.ReadFile(docFile)
	if err != nil {
		return fmt.Errorf("read document: %w", err)
	}
	out, err := replaceSection(doc, tables(r))
	if err != nil {
		return fmt.Errorf("%s: %w", docFile, err)
	}
	if err := os.MkdirAll(imgDir, 0o755); err != nil {
		return fmt.Errorf("create image dir: %w", err)
	}
	if err := plotThroughput(r, filepath.Join(imgDir, throughputPNG)); err != nil {
		return err
	}
	if err := plotLatency(r, filepath.Join(imgDir, latencyPNG)); err != nil {
		return err
	}
	if err := os.WriteFile(docFile, out, 0o644); err != nil {
		return fmt.Errorf("write document: %w", err)
	}
	return nil
}
