package k8stest

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/internal/daemon"
)

// TestManifestsMatchBinary renders every overlay and checks every object
// against the binary and against what an SRE would check by hand. Each
// check says what it protects in its message.
func TestManifestsMatchBinary(t *testing.T) {
	probePaths := opsPaths(t)
	deployDoc, err := os.ReadFile(filepath.Join(repoRoot(t), "docs", "deploy.md"))
	if err != nil {
		t.Fatalf("docs/deploy.md: %v", err)
	}
	for _, overlay := range overlays {
		t.Run(overlay, func(t *testing.T) {
			r := render(t, overlay)
			if t.Failed() {
				return
			}
			ds := droverContainers(t, r)
			if len(ds) == 0 {
				t.Fatal("no drover container")
			}
			targets := map[string]bool{}
			for _, d := range ds {
				targets[d.target] = true
				checkEnv(t, r, d)
				checkPorts(t, r, d)
				checkProbes(t, r, d, probePaths)
				checkVolumes(t, r, d, string(deployDoc))
				checkWorkloadKind(t, r, d)
				checkGrace(t, r, d)
				checkScrape(t, r, d)
				checkEndpoints(t, r, d)
				checkRunsWith(t, r, d)
			}
			for _, want := range []string{"frontend", "router", "storage-writer", "livefeed", "api", "alerts"} {
				if !targets[want] {
					t.Errorf("no drover %s in the overlay", want)
				}
			}
			for _, w := range r.workloads() {
				checkSecurity(t, r, w)
				checkResources(t, r, w)
			}
			checkServices(t, r)
			checkPDBs(t, r)
			checkNetworkPolicies(t, r)
			checkExternal(t, r, string(deployDoc))
			if overlay == "production" {
				checkCapacity(t, r)
			}
		})
	}
}

// opsPaths returns, for each probe path the manifests may use, whether the
// ops server every drover process runs serves it (a real daemon.Ops).
func opsPaths(t *testing.T) map[string]bool {
	t.Helper()
	o, err := daemon.NewOps(daemon.OpsConfig{Listen: "127.0.0.1:0"}, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(o.Handler())
	defer srv.Close()
	served := map[string]bool{}
	for _, p := range []string{"/healthz", "/readyz", "/metrics", "/"} {
		resp, err := http.Get(srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		served[p] = resp.StatusCode != http.StatusNotFound
	}
	if !served["/healthz"] || !served["/readyz"] {
		t.Fatalf("the ops server serves no /healthz or /readyz: %v", served)
	}
	return served
}

// checkProbes: every probe asks the ops port for a path the ops server
// serves; liveness and startup never depend on readiness (a process
// repairing its queue answers /healthz and is never killed for being
// slow); readiness is /readyz.
func checkProbes(t *testing.T, r *rendered, d dcontainer, served map[string]bool) {
	t.Helper()
	ops := opsPort(d)
	for _, p := range []struct {
		kind  string
		probe *corev1.Probe
		want  string
	}{
		{"startupProbe", d.c.StartupProbe, "/healthz"},
		{"readinessProbe", d.c.ReadinessProbe, "/readyz"},
		{"livenessProbe", d.c.LivenessProbe, "/healthz"},
	} {
		if p.probe == nil {
			t.Errorf("%s: no %s", d.where(r), p.kind)
			continue
		}
		g := p.probe.HTTPGet
		if g == nil {
			t.Errorf("%s: %s is not an HTTP GET of the ops server (the image has no shell for exec probes)", d.where(r), p.kind)
			continue
		}
		if !served[g.Path] {
			t.Errorf("%s: %s path %q is not served by the ops server", d.where(r), p.kind, g.Path)
		}
		if g.Path != p.want {
			t.Errorf("%s: %s asks %s; want %s", d.where(r), p.kind, g.Path, p.want)
		}
		port, ok := portNumber(d.c, g.Port.StrVal, g.Port.IntVal)
		if !ok || port != ops {
			t.Errorf("%s: %s port %s is not the ops port %d (-ops-listen %s)", d.where(r), p.kind, g.Port.String(), ops, d.value("ops-listen"))
		}
	}
	if lp := d.c.LivenessProbe; lp != nil {
		if budget := lp.PeriodSeconds * lp.FailureThreshold; budget < 30 {
			t.Errorf("%s: liveness kills after %d s without an answer: too eager for a process under load", d.where(r), budget)
		}
	}
}

// checkVolumes: every path flag points into a mounted volume; what the
// process writes is on a writable volume that survives a restart where it
// must; every file read from a Secret or ConfigMap is a key of it; every
// mount is used by some flag.
func checkVolumes(t *testing.T, r *rendered, d dcontainer, deployDoc string) {
	t.Helper()
	used := map[string]bool{}
	for name, f := range d.flags {
		if !isPathKind(f.kind) {
			continue
		}
		_, explicit := d.set[name]
		v := d.value(name)
		if v == "" || (!explicit && !writtenFlags[name] && d.env[f.env] == "") {
			continue // unset read paths (the default is unused or derived)
		}
		m, rel, ok := mountOf(d.c, v)
		if !ok {
			t.Errorf("%s: -%s %s is on the image's read-only root: no volume is mounted there", d.where(r), name, v)
			continue
		}
		used[m.Name] = true
		vol, ok := volumeNamed(d.w.template.Spec, m.Name)
		isClaim := slices.ContainsFunc(d.w.claims, func(c corev1.PersistentVolumeClaim) bool { return c.Name == m.Name })
		if !ok && !isClaim {
			t.Errorf("%s: mount %s has no volume", d.where(r), m.Name)
			continue
		}
		if writtenFlags[name] {
			switch {
			case m.ReadOnly:
				t.Errorf("%s: -%s %s is written but its mount %s is read-only", d.where(r), name, v, m.Name)
			case isClaim:
			case vol.PersistentVolumeClaim != nil:
				if _, ok := r.pvcs[vol.PersistentVolumeClaim.ClaimName]; !ok {
					t.Errorf("%s: volume %s: PersistentVolumeClaim %s is not in the overlay", d.where(r), m.Name, vol.PersistentVolumeClaim.ClaimName)
				}
			case vol.EmptyDir != nil && !queueTargets[d.target]:
				// api on PostgreSQL: only the first admin key, once.
			default:
				t.Errorf("%s: -%s %s is written to volume %s, which is neither a PVC nor allowed to be lost", d.where(r), name, v, m.Name)
			}
			continue
		}
		switch {
		case vol.Secret != nil:
			checkKey(t, r, d, name, "Secret", vol.Secret.SecretName, rel, deployDoc)
		case vol.ConfigMap != nil:
			checkKey(t, r, d, name, "ConfigMap", vol.ConfigMap.Name, rel, deployDoc)
		}
		if (vol.Secret != nil || vol.ConfigMap != nil) && !m.ReadOnly {
			t.Errorf("%s: mount %s of a Secret or ConfigMap should be readOnly", d.where(r), m.Name)
		}
		if m.SubPath != "" && vol.Secret != nil {
			t.Errorf("%s: mount %s uses subPath: the kubelet never updates it (key rotation needs the whole volume)", d.where(r), m.Name)
		}
	}
	for _, m := range d.c.VolumeMounts {
		if !used[m.Name] {
			t.Errorf("%s: mount %s at %s is used by no flag of drover %s", d.where(r), m.Name, m.MountPath, d.target)
		}
	}
}

// checkKey: a file read from a Secret or ConfigMap volume is one of its
// keys (rendered objects), or the object is external and docs/deploy.md
// tells how to make it with that key.
func checkKey(t *testing.T, r *rendered, d dcontainer, flag, kind, name, key, deployDoc string) {
	t.Helper()
	var keys []string
	switch kind {
	case "Secret":
		if s, ok := r.secrets[name]; ok {
			for k := range s.Data {
				keys = append(keys, k)
			}
			for k := range s.StringData {
				keys = append(keys, k)
			}
		}
	case "ConfigMap":
		if c, ok := r.configMaps[name]; ok {
			for k := range c.Data {
				keys = append(keys, k)
			}
		}
	}
	if keys != nil {
		if !slices.Contains(keys, key) {
			t.Errorf("%s: -%s reads %s %s key %q, which it does not have (%v)", d.where(r), flag, kind, name, key, keys)
		}
		return
	}
	if !strings.Contains(deployDoc, name) || !strings.Contains(deployDoc, key) {
		t.Errorf("%s: -%s reads %s %s key %q, made outside the manifests: docs/deploy.md must say how to make it", d.where(r), flag, kind, name, key)
	}
}

// checkWorkloadKind: what holds a queue is a StatefulSet whose
// volumeClaimTemplate holds the queue; the rest are Deployments.
func checkWorkloadKind(t *testing.T, r *rendered, d dcontainer) {
	t.Helper()
	if !queueTargets[d.target] {
		if d.w.kind != "Deployment" {
			t.Errorf("%s: drover %s holds no queue: a Deployment, not a %s", d.where(r), d.target, d.w.kind)
		}
		return
	}
	if d.w.kind != "StatefulSet" {
		t.Errorf("%s: drover %s holds a queue: a StatefulSet with a volume per pod, not a %s", d.where(r), d.target, d.w.kind)
		return
	}
	flag := queueFlag(d.target)
	m, _, ok := mountOf(d.c, d.value(flag))
	if !ok || !slices.ContainsFunc(d.w.claims, func(c corev1.PersistentVolumeClaim) bool { return c.Name == m.Name }) {
		t.Errorf("%s: -%s %s is not on the StatefulSet's volumeClaimTemplate", d.where(r), flag, d.value(flag))
	}
}

// checkGrace: the kubelet's SIGKILL never comes before the process's own
// shutdown deadline (plus the preStop wait): a stop always ends in order.
func checkGrace(t *testing.T, r *rendered, d dcontainer) {
	t.Helper()
	st, err := time.ParseDuration(d.value("shutdown-timeout"))
	if err != nil {
		t.Errorf("%s: -shutdown-timeout %q: %v", d.where(r), d.value("shutdown-timeout"), err)
		return
	}
	pre := time.Duration(0)
	if l := d.c.Lifecycle; l != nil && l.PreStop != nil {
		switch {
		case l.PreStop.Sleep != nil:
			pre = time.Duration(l.PreStop.Sleep.Seconds) * time.Second
		case l.PreStop.Exec != nil:
			t.Errorf("%s: an exec preStop needs a shell the image does not have; use sleep", d.where(r))
		}
	}
	tgps := time.Duration(ptrOr(d.w.template.Spec.TerminationGracePeriodSeconds, 30)) * time.Second
	if need := st + pre + 5*time.Second; tgps < need {
		t.Errorf("%s: terminationGracePeriodSeconds %v < preStop %v + -shutdown-timeout %v + 5 s", d.where(r), tgps, pre, st)
	}
	if d.target == "frontend" && pre == 0 {
		t.Errorf("%s: a frontend needs a preStop wait: load balancers keep sending for seconds after the pod leaves the endpoints", d.where(r))
	}
}

// checkScrape: Prometheus finds the ops port.
func checkScrape(t *testing.T, r *rendered, d dcontainer) {
	t.Helper()
	a := d.w.template.Annotations
	if a["prometheus.io/scrape"] != "true" || a["prometheus.io/port"] != fmt.Sprint(opsPort(d)) || a["prometheus.io/path"] != "/metrics" {
		t.Errorf("%s: scrape annotations %v; want scrape true, port %d, path /metrics", d.where(r), a, opsPort(d))
	}
	if d.value("ops-token-file") == "" {
		t.Errorf("%s: -ops-listen is reachable from the network but /metrics has no -ops-token-file", d.where(r))
	}
}

var dnsEndpoint = regexp.MustCompile(`dns\+tcp://([a-z0-9.-]+):(\d+)`)

// checkEndpoints: every dns+tcp:// name is a headless Service of the
// overlay with that port, on pods that listen there; the Service that
// durable subscribers and livefeeds follow lists pods that are not ready
// (a router being drained must still be emptied), the frontends' follows
// readiness.
func checkEndpoints(t *testing.T, r *rendered, d dcontainer) {
	t.Helper()
	for _, m := range dnsEndpoint.FindAllStringSubmatch(d.value("routers"), -1) {
		name, port := m[1], m[2]
		svc, ok := r.services[strings.Split(name, ".")[0]]
		if !ok {
			t.Errorf("%s: -routers names %s, which is no Service of the overlay", d.where(r), name)
			continue
		}
		if svc.Spec.ClusterIP != corev1.ClusterIPNone {
			t.Errorf("%s: Service %s is not headless: its name resolves to one virtual IP, not to every router pod", d.where(r), svc.Name)
		}
		found := false
		for _, p := range svc.Spec.Ports {
			found = found || fmt.Sprint(p.Port) == port
		}
		if !found {
			t.Errorf("%s: Service %s has no port %s", d.where(r), svc.Name, port)
		}
		wantNotReady := d.target != "frontend"
		if svc.Spec.PublishNotReadyAddresses != wantNotReady {
			t.Errorf("%s: Service %s publishNotReadyAddresses=%v; want %v", d.where(r), svc.Name, svc.Spec.PublishNotReadyAddresses, wantNotReady)
		}
		// The pods behind it listen on that port.
		sel := labels.SelectorFromSet(svc.Spec.Selector)
		listening := false
		for _, o := range droverContainers(t, r) {
			if sel.Matches(labels.Set(o.w.template.Labels)) {
				for p := range listenPorts(o) {
					listening = listening || fmt.Sprint(p) == port
				}
			}
		}
		if !listening {
			t.Errorf("%s: no pod behind Service %s listens on %s", d.where(r), svc.Name, port)
		}
	}
}

// checkRunsWith runs the real binary with the container's arguments and
// environment and -h: the flag sets parse every argument and every
// variable's value (a bad duration, a flag that does not exist, a value of
// the wrong type fail here).
func checkRunsWith(t *testing.T, r *rendered, d dcontainer) {
	t.Helper()
	// A secret's -file flag reads the file as it parses: give it one.
	args := slices.Clone(d.c.Args)
	for i, a := range args {
		name, _, ok := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if base, isFile := strings.CutSuffix(name, "-file"); ok && isFile && d.flags[base].secretEnv != "" {
			f := filepath.Join(t.TempDir(), "secret")
			if err := os.WriteFile(f, []byte("a-secret\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			args[i] = "-" + name + "=" + f
		}
	}
	cmd := exec.Command(drover(t), append(args, "-h")...)
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	for k, v := range d.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Errorf("%s: drover %s -h with the container's arguments and environment: %v\n%s", d.where(r), strings.Join(d.c.Args, " "), err, lastLines(string(out), 5))
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "\n")
}

// checkSecurity: every pod passes the "restricted" Pod Security Standard
// (the namespaces enforce it) and drover's pods go further: read-only
// root, no service account token, no service links (Kubernetes would set
// DROVER_<SERVICE>_PORT and the like in the names drover reads its flags
// from).
func checkSecurity(t *testing.T, r *rendered, w workload) {
	t.Helper()
	where := fmt.Sprintf("%s %s/%s", r.overlay, w.kind, w.name)
	spec := w.template.Spec
	psc := spec.SecurityContext
	if psc == nil || !ptrOr(psc.RunAsNonRoot, false) {
		t.Errorf("%s: pod securityContext.runAsNonRoot is not true", where)
	}
	if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: pod seccompProfile is not RuntimeDefault", where)
	}
	if psc != nil && psc.RunAsUser != nil && *psc.RunAsUser == 0 {
		t.Errorf("%s: runs as root", where)
	}
	drover := slices.ContainsFunc(spec.Containers, isDrover)
	if drover {
		if ptrOr(spec.EnableServiceLinks, true) {
			t.Errorf("%s: enableServiceLinks is not false: Kubernetes would put DROVER_ROUTER_PORT=tcp://... and the like in the environment drover reads its flags from", where)
		}
		if ptrOr(spec.AutomountServiceAccountToken, true) {
			t.Errorf("%s: automountServiceAccountToken is not false: drover never talks to the apiserver", where)
		}
		if len(w.claims) > 0 && (psc == nil || psc.FSGroup == nil) {
			t.Errorf("%s: volumes but no fsGroup: the non-root user cannot write them", where)
		}
	}
	for _, c := range spec.Containers {
		sc := c.SecurityContext
		if sc == nil {
			t.Errorf("%s container %s: no securityContext", where, c.Name)
			continue
		}
		if ptrOr(sc.AllowPrivilegeEscalation, true) {
			t.Errorf("%s container %s: allowPrivilegeEscalation is not false", where, c.Name)
		}
		if ptrOr(sc.Privileged, false) {
			t.Errorf("%s container %s: privileged", where, c.Name)
		}
		if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
			t.Errorf("%s container %s: capabilities %v; want all dropped, none added", where, c.Name, sc.Capabilities)
		}
		if isDrover(c) && !ptrOr(sc.ReadOnlyRootFilesystem, false) {
			t.Errorf("%s container %s: the root file system is not read-only", where, c.Name)
		}
	}
}

// checkResources: every container asks for CPU and memory and has a
// memory limit (a leak is then a restart, not a node's loss).
func checkResources(t *testing.T, r *rendered, w workload) {
	t.Helper()
	for _, c := range w.template.Spec.Containers {
		where := fmt.Sprintf("%s %s/%s container %s", r.overlay, w.kind, w.name, c.Name)
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
			t.Errorf("%s: no CPU or memory request", where)
		}
		if c.Resources.Limits.Memory().IsZero() {
			t.Errorf("%s: no memory limit", where)
		} else if c.Resources.Limits.Memory().Cmp(*c.Resources.Requests.Memory()) < 0 {
			t.Errorf("%s: memory limit below its request", where)
		}
	}
}
