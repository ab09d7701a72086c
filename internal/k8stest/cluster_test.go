package k8stest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"github.com/drover-telemetry/drover/internal/testenv"
)

// cluster plays rendered manifests with podman kube play, doing by hand
// what the apiserver, the controllers, the kubelet and the cluster DNS
// would do, and nothing more:
//
//   - a StatefulSet's ordinal N becomes a Pod named NAME-N, with host name
//     NAME-N in subdomain serviceName, each volumeClaimTemplate a named
//     volume CLAIM-NAME-N that outlives the pod (as a PVC does);
//   - a Deployment's replica becomes a Pod NAME-REVISION-N;
//   - Secret volumes become hostPath directories holding the Secret's keys
//     (podman 4.3's kube play crashes on secret volumes), envFrom
//     ConfigMaps become the same variables in env;
//   - Services become DNS: every pod joins one podman network (aardvark-dns)
//     with network aliases for each headless Service that selects it and
//     for NAME-N.serviceName; a name with several pods resolves to all;
//   - containerPorts are left out (podman 4.3 would bind each on the host);
//     pods are reached on the network at their IP, as in a cluster;
//   - probes and preStop are run by the runner (the kubelet's work): it
//     polls the readiness probe's URL on the pod's IP, and stops a pod by
//     sleeping its preStop, sending SIGTERM and, after the grace period,
//     SIGKILL, to its containers first and to its infra container (the
//     sandbox: its network) only once they have exited, as the kubelet does.
//
// What it does not do is in docs/deploy.md, "What is tested here".
type cluster struct {
	t       *testing.T
	pm      *testenv.Podman
	r       *rendered
	net     string
	gateway string
	image   string            // drover image tag pods are played with
	secrets map[string]string // Secret name → host directory
	dir     string

	mu      sync.Mutex
	pods    map[string]*pod // by name
	volumes map[string]bool // named volumes played pods used
	log     []string        // what the runner did, with times
	t0      time.Time
}

// pod is one played pod.
type pod struct {
	name     string
	w        workload
	ordinal  int
	image    string
	ip       string
	ready    bool
	stopping bool
}

func newCluster(t *testing.T, pm *testenv.Podman, r *rendered, image string) *cluster {
	t.Helper()
	id := fmt.Sprintf("%d", time.Now().UnixNano()%1_000_000)
	c := &cluster{t: t, pm: pm, r: r, net: "drover-k8stest-" + id, image: image, secrets: map[string]string{},
		dir: t.TempDir(), pods: map[string]*pod{}, volumes: map[string]bool{}, t0: time.Now()}
	pm.Run(t, "network", "create", c.net)
	t.Cleanup(func() {
		c.mu.Lock()
		names := make([]string, 0, len(c.pods))
		for n := range c.pods {
			names = append(names, n)
		}
		c.mu.Unlock()
		for _, n := range names {
			if t.Failed() {
				t.Logf("--- last lines of pod %s ---\n%s", n, c.logs(c.pods[n], 40))
			}
			_, _ = pm.Try("pod", "rm", "--force", "--time", "2", n)
		}
		for v := range c.volumes {
			_, _ = pm.Try("volume", "rm", "--force", v)
		}
		_, _ = pm.Try("network", "rm", "--force", c.net)
	})
	c.gateway = pm.Run(t, "network", "inspect", c.net, "--format", "{{range .Subnets}}{{.Gateway}}{{end}}")
	return c
}

// logs returns the last lines of a pod's container (podman logs replays
// the container's standard error on its own).
func (c *cluster) logs(p *pod, lines int) string {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := c.pm.Command(ctx, "logs", "--tail", fmt.Sprint(lines), p.name+"-"+containerOf(p)).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("(podman logs: %v) %s", err, out)
	}
	return string(out)
}

func containerOf(p *pod) string {
	if p == nil || len(p.w.template.Spec.Containers) == 0 {
		return ""
	}
	return p.w.template.Spec.Containers[0].Name
}

// logf records what the runner does, with the time since the start.
func (c *cluster) logf(format string, args ...any) {
	line := fmt.Sprintf("%7.1fs  ", time.Since(c.t0).Seconds()) + fmt.Sprintf(format, args...)
	c.mu.Lock()
	c.log = append(c.log, line)
	c.mu.Unlock()
	c.t.Log(line)
}

// secret makes a Secret's keys available to pods: a directory with one
// file per key, readable by drover's user only.
func (c *cluster) secret(name string, data map[string]string) {
	dir := filepath.Join(c.dir, "secrets", name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		c.t.Fatal(err)
	}
	for k, v := range data {
		if err := os.WriteFile(filepath.Join(dir, k), []byte(v), 0o400); err != nil {
			c.t.Fatal(err)
		}
		_ = os.Chown(filepath.Join(dir, k), 65532, 65532)
	}
	_ = os.Chown(dir, 65532, 65532)
	_ = os.Chmod(dir, 0o500)
	_ = os.Chmod(filepath.Dir(dir), 0o755)
	_ = os.Chmod(c.dir, 0o755)
	c.secrets[name] = dir
}

// workload returns the rendered workload of that name.
func (c *cluster) workload(name string) workload {
	for _, w := range c.r.workloads() {
		if w.name == name {
			return w
		}
	}
	c.t.Fatalf("no workload %s", name)
	return workload{}
}

// podName is the pod name the controllers would give.
func podName(w workload, ordinal int, revision string) string {
	if w.kind == "StatefulSet" {
		return fmt.Sprintf("%s-%d", w.name, ordinal)
	}
	return fmt.Sprintf("%s-%s-%d", w.name, revision, ordinal)
}

// manifest returns the Pod YAML podman plays for ordinal of w.
func (c *cluster) manifest(w workload, name string, ordinal int, image string) []byte {
	spec := *w.template.Spec.DeepCopy()
	p := corev1.Pod{}
	p.APIVersion, p.Kind = "v1", "Pod"
	p.Name = name
	p.Labels = map[string]string{}
	for k, v := range w.template.Labels {
		p.Labels[k] = v
	}
	p.Annotations = w.template.Annotations
	if w.kind == "StatefulSet" {
		p.Labels["statefulset.kubernetes.io/pod-name"] = name
		spec.Hostname = name
		for _, s := range c.r.statefulSets {
			if s.Name == w.name {
				spec.Subdomain = s.Spec.ServiceName
			}
		}
		for _, claim := range w.claims {
			spec.Volumes = append(spec.Volumes, corev1.Volume{Name: claim.Name, VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim.Name + "-" + name}}})
		}
	} else {
		spec.Hostname = name
	}
	for i := range spec.Volumes {
		v := &spec.Volumes[i]
		if v.Secret != nil {
			dir, ok := c.secrets[v.Secret.SecretName]
			if !ok {
				c.t.Fatalf("pod %s needs Secret %s, which the runner was not given", name, v.Secret.SecretName)
			}
			dirType := corev1.HostPathDirectory
			v.VolumeSource = corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: dir, Type: &dirType}}
		}
	}
	for i := range spec.Containers {
		ct := &spec.Containers[i]
		if isDrover(*ct) {
			ct.Image = image
		}
		var env []corev1.EnvVar
		for _, from := range ct.EnvFrom {
			if from.ConfigMapRef == nil {
				continue
			}
			cm := c.r.configMaps[from.ConfigMapRef.Name]
			keys := make([]string, 0, len(cm.Data))
			for k := range cm.Data {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				env = append(env, corev1.EnvVar{Name: from.Prefix + k, Value: cm.Data[k]})
			}
		}
		ct.Env = append(env, ct.Env...)
		ct.EnvFrom = nil
		// The runner is the kubelet: it probes and runs preStop itself.
		ct.StartupProbe, ct.ReadinessProbe, ct.LivenessProbe, ct.Lifecycle = nil, nil, nil, nil
		// podman 4.3 publishes a containerPort on the host's same port
		// (Kubernetes only does so for a hostPort): pods are reached on
		// the network by their IP, as in a cluster.
		ct.Ports = nil
	}
	p.Spec = spec
	y, err := yaml.Marshal(p)
	if err != nil {
		c.t.Fatal(err)
	}
	return y
}

// aliases returns the DNS names a pod has: NAME-N.serviceName for a
// StatefulSet's pod, every headless Service that selects it, and every
// ClusterIP Service that selects it and serves each port on the same port
// of the pod (the api's): with no virtual IP here, the name resolves to
// the pod itself, which answers on the Service's ports as kube-proxy
// would forward them. A ClusterIP Service that maps ports (drover-live,
// 80 → 8081) is not emulated.
func (c *cluster) aliases(w workload, name string) []string {
	var out []string
	for _, s := range c.r.statefulSets {
		if s.Name == w.name {
			out = append(out, name+"."+s.Spec.ServiceName)
		}
	}
	for _, svc := range c.r.services {
		if len(svc.Spec.Selector) == 0 || !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(w.template.Labels)) {
			continue
		}
		switch {
		case svc.Spec.ClusterIP == corev1.ClusterIPNone:
			out = append(out, svc.Name)
		case svc.Spec.Type == "" || svc.Spec.Type == corev1.ServiceTypeClusterIP:
			same := len(svc.Spec.Ports) > 0
			for _, sp := range svc.Spec.Ports {
				n, ok := portNumber(w.template.Spec.Containers[0], sp.TargetPort.StrVal, sp.TargetPort.IntVal)
				same = same && ok && n == sp.Port
			}
			if same {
				out = append(out, svc.Name)
			}
		}
	}
	sort.Strings(out)
	return out
}

// start plays a pod of w with image and returns it (not yet ready).
func (c *cluster) start(w workload, ordinal int, revision, image string) *pod {
	c.t.Helper()
	name := podName(w, ordinal, revision)
	path := filepath.Join(c.dir, name+".yaml")
	if err := os.WriteFile(path, c.manifest(w, name, ordinal, image), 0o644); err != nil {
		c.t.Fatal(err)
	}
	network := c.net
	if as := c.aliases(w, name); len(as) > 0 {
		opts := make([]string, len(as))
		for i, a := range as {
			opts[i] = "alias=" + a
		}
		network += ":" + strings.Join(opts, ",")
	}
	if _, err := c.pm.Try("kube", "play", "--network", network, path); err != nil {
		c.t.Fatalf("podman kube play %s: %v", name, err)
	}
	p := &pod{name: name, w: w, ordinal: ordinal, image: image}
	c.mu.Lock()
	for _, v := range p.w.template.Spec.Volumes {
		if v.PersistentVolumeClaim != nil {
			c.volumes[v.PersistentVolumeClaim.ClaimName] = true
		}
	}
	for _, claim := range w.claims {
		c.volumes[claim.Name+"-"+name] = true
	}
	c.mu.Unlock()
	infra := c.pm.Run(c.t, "pod", "inspect", name, "--format", "{{.InfraContainerID}}")
	p.ip = c.pm.Run(c.t, "inspect", infra, "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}")
	c.mu.Lock()
	c.pods[name] = p
	c.mu.Unlock()
	c.logf("started %s (%s) at %s, DNS %v", name, image, p.ip, c.aliases(w, name))
	return p
}

// readyURL is the URL of the pod's readiness probe.
func readyURL(p *pod) string {
	ct := p.w.template.Spec.Containers[0]
	g := ct.ReadinessProbe.HTTPGet
	port, _ := portNumber(ct, g.Port.StrVal, g.Port.IntVal)
	return fmt.Sprintf("http://%s:%d%s", p.ip, port, g.Path)
}

// waitReady polls the readiness probe as the kubelet would, until it
// passes; a pod whose container exits fails the test.
func (c *cluster) waitReady(p *pod, timeout time.Duration) {
	c.t.Helper()
	probe := p.w.template.Spec.Containers[0].ReadinessProbe
	period := time.Duration(max(probe.PeriodSeconds, 1)) * time.Second
	if period > time.Second {
		period = time.Second // the runner polls faster than the kubelet would: it only shortens the test
	}
	client := http.Client{Timeout: time.Duration(max(probe.TimeoutSeconds, 1)) * time.Second}
	deadline := time.Now().Add(timeout)
	for {
		resp, err := client.Get(readyURL(p))
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				c.mu.Lock()
				p.ready = true
				c.mu.Unlock()
				c.logf("%s ready", p.name)
				return
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s not ready within %v: %v", p.name, timeout, err)
		}
		time.Sleep(period)
	}
}

// stop stops a pod as the kubelet does after a delete: it leaves the
// endpoints at once (not ready), sleeps its preStop, sends SIGTERM to its
// containers, and SIGKILL when the grace period is over; then it removes
// the pod, its network with it; its volumes stay.
//
// The order matters. The kubelet stops a pod's containers and only then
// its sandbox, whose network namespace they use until they exit. `podman
// pod stop` (4.3, Debian 12's) stops every container of the pod at once,
// the infra container too, and the infra container's exit tears the pod's
// network down (ordered stop was proposed upstream: containers/podman#25169):
// a frontend's lame duck then ran its 10 s without a network, its 1012
// closes never reached the devices, and the load balancer kept the
// devices' side of those connections open, so that nearly every device
// waited for its ack timeout (10 s) and a reconnect: the 13 s ack waits of
// the rolling update (docs/deploy.md, "What is tested here"). So the
// containers are stopped by name, and the runner checks that the infra
// container exited after them.
func (c *cluster) stop(p *pod) {
	c.t.Helper()
	c.mu.Lock()
	p.ready, p.stopping = false, true
	c.mu.Unlock()
	spec := p.w.template.Spec
	grace := time.Duration(ptrOr(spec.TerminationGracePeriodSeconds, 30)) * time.Second
	pre := time.Duration(0)
	if l := spec.Containers[0].Lifecycle; l != nil && l.PreStop != nil && l.PreStop.Sleep != nil {
		pre = time.Duration(l.PreStop.Sleep.Seconds) * time.Second
	}
	c.logf("deleting %s: preStop %v, then SIGTERM with %v left of the grace period", p.name, pre, grace-pre)
	time.Sleep(pre)
	start := time.Now()
	args := []string{"stop", "--time", fmt.Sprint(int((grace - pre).Seconds()))}
	for _, ct := range spec.Containers {
		args = append(args, p.name+"-"+ct.Name) // in parallel, as the kubelet kills them
	}
	c.pm.Run(c.t, args...)
	code := c.pm.Run(c.t, "inspect", p.name+"-"+containerOf(p), "--format", "{{.State.ExitCode}}")
	c.logf("%s stopped in %v, exit status %s", p.name, time.Since(start).Round(10*time.Millisecond), code)
	if code != "0" {
		c.t.Errorf("%s exited with %s after SIGTERM (not a clean stop within its grace period)", p.name, code)
	}
	// The infra container stops once the pod's last container has exited
	// (kube play's pods have exit policy "stop"): never before.
	infra := c.pm.Run(c.t, "pod", "inspect", p.name, "--format", "{{.InfraContainerID}}")
	state := func(ctr string) (string, int64) {
		st := strings.Fields(c.pm.Run(c.t, "inspect", ctr, "--format", "{{.State.Status}} {{.State.FinishedAt.UnixNano}}"))
		if len(st) != 2 {
			c.t.Fatalf("podman inspect %s: %q", ctr, st)
		}
		n, _ := strconv.ParseInt(st[1], 10, 64)
		return st[0], n
	}
	if st, infraAt := state(infra); st != "running" {
		for _, ct := range spec.Containers {
			if _, at := state(p.name + "-" + ct.Name); infraAt < at {
				c.t.Errorf("%s: its infra container (the pod's network) exited %v before its container %s; want after (the kubelet removes the sandbox last)",
					p.name, time.Duration(at-infraAt).Round(time.Millisecond), ct.Name)
			}
		}
	}
	c.pm.Run(c.t, "pod", "rm", "--force", p.name)
	c.mu.Lock()
	delete(c.pods, p.name)
	c.mu.Unlock()
}

// readyPods returns the ready pods that a Service selector matches, in
// name order.
func (c *cluster) readyPods(sel map[string]string) []*pod {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*pod
	for _, p := range c.pods {
		if p.ready && labels.SelectorFromSet(sel).Matches(labels.Set(p.w.template.Labels)) {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b *pod) int { return strings.Compare(a.name, b.name) })
	return out
}

// unavailable returns how many of want pods of w are not ready.
func (c *cluster) unavailable(w workload, want int) int {
	return want - len(c.readyPods(w.selector))
}

// scrape returns a pod's /metrics (with the ops token).
func (c *cluster) scrape(ctx context.Context, p *pod, token string) (string, error) {
	ct := p.w.template.Spec.Containers[0]
	port, _ := portNumber(ct, "ops", 0)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s:%d/metrics", p.ip, port), nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET /metrics of %s: %s", p.name, resp.Status)
	}
	return string(b), err
}

// volumePath returns where a pod's named volume is on this machine.
func (c *cluster) volumePath(claim string) string {
	return c.pm.Run(c.t, "volume", "inspect", claim, "--format", "{{.Mountpoint}}")
}
