// Package capacity is drover's capacity model: from measured figures
// (figures.json: CPU per frame and per reading of each component, memory per
// device connection, disk bytes per reading of each queue, InfluxDB's own
// CPU per point) and a scenario (devices, readings per second, readings per
// frame) it computes how many pods of each kind a Kubernetes deployment
// needs, with what requests, limits and volumes, including the headroom for
// a reconnect stampede and for a one-hour outage of any stage.
//
// `go run ./scripts/capacity` prints the plans of the three
// scenarios (docs/capacity.md shows them and explains every rule);
// internal/k8stest checks that the production overlay's replicas,
// requests and volumes are those of scenario (c). When a figure is measured
// again, edit figures.json: the model, the document and the overlay follow.
package capacity

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"math"
)

// Figure is one measured (or, where said, assumed) number and its source.
type Figure struct {
	Value  float64 `json:"value"`
	Source string  `json:"source"`
}

// Figures are the measurements the model computes from.
type Figures struct {
	FrontendCPUPerFrame        Figure `json:"frontend_cpu_us_per_frame"`
	FrontendCPUPerReading      Figure `json:"frontend_cpu_us_per_reading"`
	FrontendBytesPerConnection Figure `json:"frontend_bytes_per_connection"`
	FrontendBaseBytes          Figure `json:"frontend_base_bytes"`
	FrontendAcceptsPerCore     Figure `json:"frontend_accepts_per_core_second"`
	RouterCPUPerFrame          Figure `json:"router_cpu_us_per_frame"`
	RouterCPUPerReading        Figure `json:"router_cpu_us_per_reading"`
	RouterBaseBytes            Figure `json:"router_base_bytes"`
	WriterInfluxCPUPerReading  Figure `json:"writer_influx_cpu_us_per_reading"`
	WriterLakeCPUPerReading    Figure `json:"writer_lake_cpu_us_per_reading"`
	WriterBaseBytes            Figure `json:"writer_base_bytes"`
	InfluxdCPUPerPoint         Figure `json:"influxd_cpu_us_per_point"`
	LivefeedCPUPerReading      Figure `json:"livefeed_cpu_us_per_reading"`
	LivefeedBytesPerVehicle    Figure `json:"livefeed_bytes_per_vehicle"`
	LivefeedBaseBytes          Figure `json:"livefeed_base_bytes"`
	QueueBytesFrontend         Figure `json:"queue_bytes_frontend"`
	QueueBytesRouterMain       Figure `json:"queue_bytes_router_main"`
	QueueBytesRouterSubscriber Figure `json:"queue_bytes_router_subscriber"`
	QueueBytesWriter           Figure `json:"queue_bytes_writer"`
}

//go:embed figures.json
var figuresJSON []byte

// Measured returns the figures of figures.json.
func Measured() Figures {
	f, err := ParseFigures(figuresJSON)
	if err != nil {
		panic(err) // the embedded file is checked by the package's tests
	}
	return f
}

// ParseFigures reads figures in figures.json's format; every figure must be
// positive.
func ParseFigures(b []byte) (Figures, error) {
	var f Figures
	if err := json.Unmarshal(b, &f); err != nil {
		return f, fmt.Errorf("capacity: figures: %w", err)
	}
	for name, v := range f.all() {
		if !(v.Value > 0) {
			return f, fmt.Errorf("capacity: figure %s: %v: want a positive number", name, v.Value)
		}
	}
	return f, nil
}

func (f Figures) all() map[string]Figure {
	return map[string]Figure{
		"frontend_cpu_us_per_frame": f.FrontendCPUPerFrame, "frontend_cpu_us_per_reading": f.FrontendCPUPerReading,
		"frontend_bytes_per_connection": f.FrontendBytesPerConnection, "frontend_base_bytes": f.FrontendBaseBytes,
		"frontend_accepts_per_core_second": f.FrontendAcceptsPerCore,
		"router_cpu_us_per_frame":          f.RouterCPUPerFrame, "router_cpu_us_per_reading": f.RouterCPUPerReading,
		"router_base_bytes":                f.RouterBaseBytes,
		"writer_influx_cpu_us_per_reading": f.WriterInfluxCPUPerReading, "writer_lake_cpu_us_per_reading": f.WriterLakeCPUPerReading,
		"writer_base_bytes": f.WriterBaseBytes, "influxd_cpu_us_per_point": f.InfluxdCPUPerPoint,
		"livefeed_cpu_us_per_reading": f.LivefeedCPUPerReading, "livefeed_bytes_per_vehicle": f.LivefeedBytesPerVehicle,
		"livefeed_base_bytes": f.LivefeedBaseBytes, "queue_bytes_frontend": f.QueueBytesFrontend,
		"queue_bytes_router_main": f.QueueBytesRouterMain, "queue_bytes_router_subscriber": f.QueueBytesRouterSubscriber,
		"queue_bytes_writer": f.QueueBytesWriter,
	}
}

// Scenario is a fleet to plan for.
type Scenario struct {
	Name string
	// Devices connected at the peak.
	Devices int
	// Rate is the readings per second at the peak, all devices together.
	Rate float64
	// FrameReadings is how many readings a device sends in one frame
	// (1: every reading as it is taken).
	FrameReadings float64
	// About says where the numbers come from.
	About string
}

// Scenarios are the three of issue 19.
func Scenarios() []Scenario {
	peakB := 0.8 * 1.5e9 / (120 * 3600) // 80 % of 1.5 billion a month in 120 peak hours
	return []Scenario{
		{Name: "a", Devices: 10_000, Rate: 10_000, FrameReadings: 1,
			About: "10,000 trucks at 1 Hz, each reading sent as it is taken"},
		{Name: "b", Devices: int(math.Ceil(peakB)), Rate: peakB, FrameReadings: 1,
			About: "1.5 billion readings a month, 80 % of them in 120 peak hours (10 M/h, 2,778/s); at 1 Hz that is 2,778 devices online at the peak"},
		{Name: "c", Devices: 200_000, Rate: 20_000, FrameReadings: 1,
			About: "200,000 connected devices at one reading per 10 s"},
	}
}

// Policy is what the model adds to the figures: the rules docs/capacity.md
// explains.
type Policy struct {
	// Utilization is the share of its CPU request a pod uses at the peak
	// (0.6: the rest absorbs bursts, garbage collection and a backlog
	// catch-up at up to 1.6 times the peak rate).
	Utilization float64
	// ConnectionsPerFrontend is the most device connections a frontend is
	// planned for, with one frontend away.
	ConnectionsPerFrontend int
	// CoresPerPod is the most CPU a frontend or router is planned to use,
	// so that losing one moves a bounded share.
	CoresPerPod float64
	// StampedeSeconds is the time in which every device reconnects after a
	// network outage or a frontend's loss.
	StampedeSeconds float64
	// OutageSeconds is the outage of any one stage each queue volume must
	// ride out.
	OutageSeconds float64
	// VolumeStep and MinVolume round volume sizes up.
	VolumeStep, MinVolume int64
}

// DefaultPolicy is the policy of docs/capacity.md.
func DefaultPolicy() Policy {
	return Policy{Utilization: 0.6, ConnectionsPerFrontend: 50_000, CoresPerPod: 2, StampedeSeconds: 60,
		OutageSeconds: 3600, VolumeStep: 10 << 30, MinVolume: 10 << 30}
}

// Pods is the plan for one kind of pod.
type Pods struct {
	Replicas int
	// CPUMilli is each pod's CPU request; no CPU limit is set (a limit
	// throttles a frontend's acks in the middle of a burst).
	CPUMilli int64
	// Memory is each pod's memory request and MemoryLimit its limit.
	Memory, MemoryLimit int64
	// Volume is each pod's queue volume, 0 for none.
	Volume int64
	// Cores is what the pods use together at the peak (not a request).
	Cores float64
}

// Plan is a scenario's deployment.
type Plan struct {
	Scenario                                                  Scenario
	Frontend, Router, WriterInflux, WriterLake, Livefeed, API Pods
	// InfluxdCores is what InfluxDB itself needs for the points (on nodes
	// of its own, or a managed service).
	InfluxdCores float64
	// StampedeAccepts is connections per second when every device
	// reconnects within Policy.StampedeSeconds, and StampedeCores the CPU
	// the frontends spend accepting them.
	StampedeAccepts, StampedeCores float64
	// MaxConnections is the frontends' -max-connections: each takes what
	// its share would be with one frontend away, and a quarter more.
	MaxConnections int
}

// Compute plans a scenario.
func Compute(s Scenario, f Figures, p Policy) Plan {
	frames := s.Rate / s.FrameReadings
	plan := Plan{Scenario: s}
	us := func(perFrame, perReading float64) float64 { return (frames*perFrame + s.Rate*perReading) / 1e6 }

	// Frontends: enough for the connections and the CPU with one away.
	feCores := us(f.FrontendCPUPerFrame.Value, f.FrontendCPUPerReading.Value)
	plan.StampedeAccepts = float64(s.Devices) / p.StampedeSeconds
	plan.StampedeCores = plan.StampedeAccepts / f.FrontendAcceptsPerCore.Value
	need := max(ceilDiv(float64(s.Devices), float64(p.ConnectionsPerFrontend)), int(math.Ceil(feCores/p.Utilization/p.CoresPerPod)), 1)
	fe := Pods{Replicas: need + 1, Cores: feCores}
	fe.CPUMilli = milli(max(feCores/p.Utilization/float64(need), plan.StampedeCores/float64(need), 0.1))
	conns := float64(s.Devices) / float64(need)
	fe.Memory = mib(f.FrontendBaseBytes.Value + conns*f.FrontendBytesPerConnection.Value)
	// A stampede lands on the frontends left: twice the request as the
	// limit, and never under the floor.
	fe.MemoryLimit = max(2*fe.Memory, minLimit)
	fe.Volume = volume(s.Rate/float64(need)*p.OutageSeconds*f.QueueBytesFrontend.Value/0.8, p)
	plan.Frontend = fe
	plan.MaxConnections = int(math.Ceil(conns*1.25/1000) * 1000)

	// Routers: at least two, and one more than the CPU needs.
	rtCores := us(f.RouterCPUPerFrame.Value, f.RouterCPUPerReading.Value)
	need = max(2, int(math.Ceil(rtCores/p.Utilization/p.CoresPerPod)))
	rt := Pods{Replicas: need + 1, Cores: rtCores}
	rt.CPUMilli = milli(max(rtCores/p.Utilization/float64(need), 0.1))
	rt.Memory = mib(f.RouterBaseBytes.Value)
	rt.MemoryLimit = max(4*rt.Memory, minLimit)
	// Sized as when its volume was split in three (main queue and two
	// subscriber queues, 139 B a reading each). Since the router's log
	// (issue 20) one queue of 101 B a reading holds a writer's outage on
	// the whole volume: this is about four times that, kept until the
	// figures are re-derived (docs/capacity.md).
	rt.Volume = volume(s.Rate/float64(need)*p.OutageSeconds*f.QueueBytesRouterSubscriber.Value*3/0.8, p)
	plan.Router = rt

	// One writer per sink (a subscriber name is one process): its queue
	// holds an outage of its sink.
	writer := func(perReading float64) Pods {
		c := s.Rate * perReading / 1e6
		w := Pods{Replicas: 1, Cores: c, CPUMilli: milli(max(c/p.Utilization, 0.1))}
		w.Memory = mib(f.WriterBaseBytes.Value)
		w.MemoryLimit = max(4*w.Memory, minLimit)
		w.Volume = volume(s.Rate*p.OutageSeconds*f.QueueBytesWriter.Value/0.8, p)
		return w
	}
	plan.WriterInflux = writer(f.WriterInfluxCPUPerReading.Value)
	plan.WriterLake = writer(f.WriterLakeCPUPerReading.Value)
	plan.InfluxdCores = s.Rate * f.InfluxdCPUPerPoint.Value / 1e6

	// Livefeeds: two, each holding every vehicle.
	lfCores := s.Rate * f.LivefeedCPUPerReading.Value / 1e6
	lf := Pods{Replicas: 2, Cores: lfCores, CPUMilli: milli(max(lfCores/p.Utilization, 0.1))}
	lf.Memory = mib(f.LivefeedBaseBytes.Value + float64(s.Devices)*f.LivefeedBytesPerVehicle.Value)
	lf.MemoryLimit = max(2*lf.Memory, minLimit)
	plan.Livefeed = lf

	// The control plane does not grow with the readings.
	plan.API = Pods{Replicas: 2, CPUMilli: 100, Memory: 128 << 20, MemoryLimit: 512 << 20}
	return plan
}

// minLimit is the smallest memory limit: below it a transient (a queue
// catching up, a burst of large frames) could kill a process whose request
// is small.
const minLimit = 512 << 20

func ceilDiv(a, b float64) int { return int(math.Ceil(a / b)) }

// milli rounds cores up to the next 50 millicores.
func milli(cores float64) int64 { return int64(math.Ceil(cores*1000/50)) * 50 }

// mib rounds bytes up to the next 64 MiB.
func mib(b float64) int64 {
	const step = 64 << 20
	return int64(math.Ceil(b/step)) * step
}

// volume rounds bytes up to the policy's step, at least its minimum.
func volume(b float64, p Policy) int64 {
	v := int64(math.Ceil(b/float64(p.VolumeStep))) * p.VolumeStep
	return max(v, p.MinVolume)
}

// Quantity formats bytes as a Kubernetes quantity (Mi or Gi).
func Quantity(b int64) string {
	if b%(1<<30) == 0 {
		return fmt.Sprintf("%dGi", b>>30)
	}
	return fmt.Sprintf("%dMi", b>>20)
}

// CPU formats millicores as a Kubernetes quantity.
func CPU(m int64) string {
	if m%1000 == 0 {
		return fmt.Sprintf("%d", m/1000)
	}
	return fmt.Sprintf("%dm", m)
}
