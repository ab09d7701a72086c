package capacity

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

// TestMeasuredFigures: the embedded figures parse, each has a source.
func TestMeasuredFigures(t *testing.T) {
	f := Measured()
	for name, v := range f.all() {
		if v.Source == "" {
			t.Errorf("figure %s has no source", name)
		}
	}
	if _, err := ParseFigures([]byte(`{"frontend_cpu_us_per_frame": {"value": 0}}`)); err == nil {
		t.Error("a zero figure was accepted")
	}
}

// TestPlanRules checks the rules docs/capacity.md states, on scenario (c).
func TestPlanRules(t *testing.T) {
	f, p := Measured(), DefaultPolicy()
	s := Scenario{Name: "c", Devices: 200_000, Rate: 20_000, FrameReadings: 1}
	plan := Compute(s, f, p)

	// With one frontend away the others hold every device within their
	// connection budget, and the memory request covers their connections.
	fe := plan.Frontend
	if per := s.Devices / (fe.Replicas - 1); per > p.ConnectionsPerFrontend {
		t.Errorf("%d frontends: %d devices each with one away; budget %d", fe.Replicas, per, p.ConnectionsPerFrontend)
	}
	if need := float64(s.Devices/(fe.Replicas-1)) * f.FrontendBytesPerConnection.Value; float64(fe.Memory) < need {
		t.Errorf("frontend memory request %d < %v for its connections", fe.Memory, need)
	}
	// CPU: the requests of the pods left with one away cover the peak at
	// the target utilisation.
	for name, pods := range map[string]Pods{"frontend": plan.Frontend, "router": plan.Router} {
		if got := float64(pods.CPUMilli) / 1000 * float64(pods.Replicas-1) * p.Utilization; got < pods.Cores-1e-9 {
			t.Errorf("%s: %d × %dm at %.0f%% = %.2f cores < %.2f used", name, pods.Replicas-1, pods.CPUMilli, p.Utilization*100, got, pods.Cores)
		}
	}
	if plan.Router.Replicas < 3 {
		t.Errorf("%d routers: want at least 2 with one away", plan.Router.Replicas)
	}
	// Each writer's volume rides out an hour of its sink's outage.
	for _, w := range []Pods{plan.WriterInflux, plan.WriterLake} {
		if hour := s.Rate * 3600 * f.QueueBytesWriter.Value; float64(w.Volume)*0.8 < hour {
			t.Errorf("writer volume %d holds less than an hour (%v bytes) in its bound", w.Volume, hour)
		}
	}
	// A router's subscriber queue (a third of 0.8 of its volume) holds an
	// hour of its share with one router away.
	share := s.Rate / float64(plan.Router.Replicas-1)
	if float64(plan.Router.Volume)*0.8/3 < share*3600*f.QueueBytesRouterSubscriber.Value {
		t.Errorf("router volume %d too small for an hour of a writer's absence", plan.Router.Volume)
	}
	if plan.MaxConnections < s.Devices/(fe.Replicas-1) {
		t.Errorf("-max-connections %d below each frontend's share with one away", plan.MaxConnections)
	}
}

// TestReport: every scenario and every figure appear in the report.
func TestReport(t *testing.T) {
	var plans []Plan
	for _, s := range Scenarios() {
		plans = append(plans, Compute(s, Measured(), DefaultPolicy()))
	}
	var b bytes.Buffer
	WriteMarkdown(&b, plans, Measured(), DefaultPolicy())
	out := b.String()
	for _, want := range []string{"Scenario (a)", "Scenario (b)", "Scenario (c)", "frontend_cpu_us_per_frame", "| frontend | 5 |"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q", want)
		}
	}
}

// TestDocument: docs/capacity.md shows the plans the model computes now
// (regenerate with go run ./scripts/capacity when a figure changes).
func TestDocument(t *testing.T) {
	doc, err := os.ReadFile("../../docs/capacity.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "<!-- capacity:begin -->\n")
	shown, _, ok2 := strings.Cut(rest, "<!-- capacity:end -->")
	if !ok || !ok2 {
		t.Fatal("docs/capacity.md has no <!-- capacity:begin --> ... <!-- capacity:end --> section")
	}
	var plans []Plan
	for _, s := range Scenarios() {
		plans = append(plans, Compute(s, Measured(), DefaultPolicy()))
	}
	var b bytes.Buffer
	WriteMarkdown(&b, plans, Measured(), DefaultPolicy())
	if shown != b.String() {
		t.Errorf("docs/capacity.md shows other plans than the model computes: paste the output of go run ./scripts/capacity between its markers")
	}
}
