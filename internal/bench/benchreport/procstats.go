package main

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
)

// procStat is one process of a scenario in procstats.json (bench-lib.sh's proc_report).
type procStat struct {
	CPUSeconds           float64  `json:"cpu_seconds"`
	WriteBytes           float64  `json:"write_bytes"`
	CancelledWriteBytes  float64  `json:"cancelled_write_bytes"`
	CPUMicrosPerReading  *float64 `json:"cpu_us_per_reading"`
	WriteBytesPerReading *float64 `json:"write_bytes_per_reading"`
}

// frontendAck is the frontend's own view of the ack latency (drover_frontend_ack_latency_seconds,
// frame read → ack written), interpolated within the histogram's buckets.
type frontendAck struct {
	Frames    uint64   `json:"frames"`
	P50Ms     float64  `json:"p50_ms"`
	P99Ms     float64  `json:"p99_ms"`
	Under5ms  *float64 `json:"under_5ms"`
	Under10ms *float64 `json:"under_10ms"`
}

// procStats is a scenario's procstats.json.
type procStats struct {
	SimCPUs           string              `json:"sim_cpus"`
	ServerCPUs        string              `json:"server_cpus"`
	Readings          float64             `json:"readings"`
	Processes         map[string]procStat `json:"processes"`
	FrontendAck       *frontendAck        `json:"frontend_ack"`
	FrontendAckSteady *frontendAck        `json:"frontend_ack_steady"`
}

// procScenarios are the scenarios that write procstats.json, in the report's order, with the
// name the tables give them.
var procScenarios = []struct{ dir, name string }{
	{"throughput", "ingest throughput"},
	{"pipeline", "end to end"},
	{"latency", "ack latency"},
	{"live", "live latency"},
}

// loadProcStats reads each scenario's procstats.json; scenarios without one are left out.
func loadProcStats(dir string) (map[string]*procStats, error) {
	out := map[string]*procStats{}
	for _, s := range procScenarios {
		var ps procStats
		found, err := readJSON(filepath.Join(dir, s.dir, "procstats.json"), &ps)
		if err != nil {
			return nil, err
		}
		if found {
			out[s.dir] = &ps
		}
	}
	return out, nil
}

// pinning says which cores ran what, for the report's header.
func pinning(r runInfo) string {
	if r.SimCPUs == "" && r.ServerCPUs == "" {
		return "not pinned: the simulator and the servers shared every core as the scheduler placed them"
	}
	or := func(s string) string {
		if s == "" {
			return "any"
		}
		return s
	}
	return fmt.Sprintf("pinned with taskset: the load generators (simulator, livelat, natspeer) on CPU %s, the servers (drover, influxd, nats-server) on CPU %s",
		or(r.SimCPUs), or(r.ServerCPUs))
}

// ackViews is the frontend's view of the acks beside the device's, for the latency row.
func ackViews(ps *procStats) string {
	if ps == nil {
		return ""
	}
	view := func(v *frontendAck) string {
		s := fmt.Sprintf("p50 %s, p99 %s", msf(v.P50Ms), msf(v.P99Ms))
		if v.Under10ms != nil {
			s += fmt.Sprintf(", %.1f%% under 10 ms", *v.Under10ms*100)
		}
		return s
	}
	switch {
	case ps.FrontendAckSteady != nil:
		return "; the frontend's own view (frame read → ack written, interpolated in its histogram's buckets), same steady span: " + view(ps.FrontendAckSteady)
	case ps.FrontendAck != nil:
		return "; the frontend's own view (frame read → ack written, interpolated in its histogram's buckets): " + view(ps.FrontendAck)
	}
	return ""
}

// perReadingTable is the table of CPU µs and disk bytes written per acked reading, each process of
// each scenario that measured them; "" when none did.
func perReadingTable(stats map[string]*procStats) string {
	var b strings.Builder
	for _, s := range procScenarios {
		ps := stats[s.dir]
		if ps == nil || ps.Readings <= 0 {
			continue
		}
		if b.Len() == 0 {
			b.WriteString("\n**Per process, per acked reading** (CPU: user + system from `/proc/PID/stat`; disk: `write_bytes` of `/proc/PID/io`, what the process sent to the storage layer, fsynced queues and sinks, an upper bound: the kernel charges each page-cache folio a write dirties whole, so small rewrites after an fsync count more than they write; the simulator's CPU from its own summary):\n\n")
			b.WriteString("| scenario | process | CPU µs per reading | bytes written per reading | CPU s in all |\n| --- | --- | ---: | ---: | ---: |\n")
		}
		names := make([]string, 0, len(ps.Processes))
		for n := range ps.Processes {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			p := ps.Processes[n]
			cpu, wb := "–", "–"
			if p.CPUMicrosPerReading != nil {
				cpu = fmt.Sprintf("%.2f", *p.CPUMicrosPerReading)
			}
			if p.WriteBytesPerReading != nil {
				wb = num(*p.WriteBytesPerReading)
			}
			fmt.Fprintf(&b, "| %s (%s readings) | %s | %s | %s | %.1f |\n", s.name, num(ps.Readings), n, cpu, wb, p.CPUSeconds)
		}
	}
	return b.String()
}
