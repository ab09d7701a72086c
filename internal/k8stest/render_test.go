package k8stest

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/drover-telemetry/drover/internal/testenv"
)

// overlays are the deployments k8s/ offers; every one is rendered and
// checked.
var overlays = []string{"dev", "production"}

// rendered is an overlay's objects, decoded into their k8s.io/api types.
type rendered struct {
	overlay      string
	objects      []runtime.Object
	namespaces   []*corev1.Namespace
	configMaps   map[string]*corev1.ConfigMap
	secrets      map[string]*corev1.Secret
	services     map[string]*corev1.Service
	pvcs         map[string]*corev1.PersistentVolumeClaim
	statefulSets []*appsv1.StatefulSet
	deployments  []*appsv1.Deployment
	pdbs         []*policyv1.PodDisruptionBudget
	policies     []*networkingv1.NetworkPolicy
	ingresses    []*networkingv1.Ingress
}

// newObject returns an empty object of the type of kind, or nil for a kind
// the manifests are not expected to hold (which fails the test: a
// CustomResource would need a type to be checked against).
func newObject(kind string) runtime.Object {
	switch kind {
	case "Namespace":
		return &corev1.Namespace{}
	case "ConfigMap":
		return &corev1.ConfigMap{}
	case "Secret":
		return &corev1.Secret{}
	case "Service":
		return &corev1.Service{}
	case "PersistentVolumeClaim":
		return &corev1.PersistentVolumeClaim{}
	case "StatefulSet":
		return &appsv1.StatefulSet{}
	case "Deployment":
		return &appsv1.Deployment{}
	case "PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}
	case "NetworkPolicy":
		return &networkingv1.NetworkPolicy{}
	case "Ingress":
		return &networkingv1.Ingress{}
	}
	return nil
}

// repoRoot is drover's repository root.
func repoRoot(t testing.TB) string {
	t.Helper()
	root, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// render builds an overlay with kustomize, as `kubectl apply -k` would,
// and decodes every object strictly: an unknown field, a field of the
// wrong type or a field given twice fails the test.
func render(t testing.TB, overlay string) *rendered {
	t.Helper()
	dir := filepath.Join(repoRoot(t), "k8s", "overlays", overlay)
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	r := &rendered{overlay: overlay, configMaps: map[string]*corev1.ConfigMap{}, secrets: map[string]*corev1.Secret{},
		services: map[string]*corev1.Service{}, pvcs: map[string]*corev1.PersistentVolumeClaim{}}
	for _, res := range rm.Resources() {
		y, err := res.AsYAML()
		if err != nil {
			t.Fatalf("%s: %v", res.CurId(), err)
		}
		js, err := yaml.YAMLToJSON(y)
		if err != nil {
			t.Fatalf("%s: %v", res.CurId(), err)
		}
		obj := newObject(res.GetKind())
		if obj == nil {
			t.Errorf("%s: kind %s is not one the manifests test knows (add its k8s.io/api type to newObject)", res.CurId(), res.GetKind())
			continue
		}
		strict, err := json.UnmarshalStrict(js, obj)
		if err != nil {
			t.Errorf("%s %s: does not decode into %T: %v", overlay, res.CurId(), obj, err)
			continue
		}
		for _, e := range strict {
			t.Errorf("%s %s: %v", overlay, res.CurId(), e)
		}
		r.objects = append(r.objects, obj)
		switch o := obj.(type) {
		case *corev1.Namespace:
			r.namespaces = append(r.namespaces, o)
		case *corev1.ConfigMap:
			r.configMaps[o.Name] = o
		case *corev1.Secret:
			r.secrets[o.Name] = o
		case *corev1.Service:
			r.services[o.Name] = o
		case *corev1.PersistentVolumeClaim:
			r.pvcs[o.Name] = o
		case *appsv1.StatefulSet:
			r.statefulSets = append(r.statefulSets, o)
		case *appsv1.Deployment:
			r.deployments = append(r.deployments, o)
		case *policyv1.PodDisruptionBudget:
			r.pdbs = append(r.pdbs, o)
		case *networkingv1.NetworkPolicy:
			r.policies = append(r.policies, o)
		case *networkingv1.Ingress:
			r.ingresses = append(r.ingresses, o)
		}
	}
	return r
}

// renderYAML returns an overlay as kustomize prints it (multi-document
// YAML), for the podman runner.
func renderYAML(t testing.TB, overlay string) []byte {
	t.Helper()
	dir := filepath.Join(repoRoot(t), "k8s", "overlays", overlay)
	rm, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	y, err := rm.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	return y
}

// workload is a pod template and what owns it.
type workload struct {
	kind, name string
	replicas   int32
	template   corev1.PodTemplateSpec
	claims     []corev1.PersistentVolumeClaim // a StatefulSet's volumeClaimTemplates
	selector   map[string]string
}

func (r *rendered) workloads() []workload {
	var ws []workload
	for _, s := range r.statefulSets {
		ws = append(ws, workload{kind: "StatefulSet", name: s.Name, replicas: ptrOr(s.Spec.Replicas, 1), template: s.Spec.Template,
			claims: s.Spec.VolumeClaimTemplates, selector: s.Spec.Selector.MatchLabels})
	}
	for _, d := range r.deployments {
		ws = append(ws, workload{kind: "Deployment", name: d.Name, replicas: ptrOr(d.Spec.Replicas, 1), template: d.Spec.Template,
			selector: d.Spec.Selector.MatchLabels})
	}
	return ws
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// droverBin is the binary under test, built once.
var droverBin struct {
	once sync.Once
	path string
	err  error
}

// drover returns the path of a drover binary built from this repository.
func drover(t testing.TB) string {
	t.Helper()
	droverBin.once.Do(func() {
		dir, err := os.MkdirTemp("", "drover-k8stest-")
		if err != nil {
			droverBin.err = err
			return
		}
		droverBin.path = filepath.Join(dir, "drover")
		cmd := exec.Command("go", "build", "-o", droverBin.path, "./cmd/drover")
		cmd.Dir = repoRoot(t)
		if out, err := cmd.CombinedOutput(); err != nil {
			droverBin.err = fmt.Errorf("build drover: %v\n%s", err, out)
		}
	})
	if droverBin.err != nil {
		t.Fatal(droverBin.err)
	}
	return droverBin.path
}

// flagInfo is one flag of a target, as its -h says.
type flagInfo struct {
	name, kind string // kind: the value's name in the usage (file, directory, duration), "" for a bool
	env        string // the environment variable, "" for a secret flag (none but its own)
	secretEnv  string // for a secret flag: the variable it is read from
	def        string // the default, as -h prints it
}

var (
	flagCache   = map[string]map[string]flagInfo{}
	flagCacheMu sync.Mutex
	flagLine    = regexp.MustCompile(`^  -(\S+)(?: (.+))?$`)
	envRef      = regexp.MustCompile(`\[\$([A-Z0-9_]+)\]`)
	secretRef   = regexp.MustCompile(`a secret: set \$([A-Z0-9_]+)`)
	defaultRef  = regexp.MustCompile(`\(default "?([^")]*)"?\)\s*$`)
)

// targetFlags parses `drover <target> -h` of the real binary: every flag
// the target accepts, with its environment variable. nil when the binary
// has no such target.
func targetFlags(t testing.TB, target string) map[string]flagInfo {
	t.Helper()
	flagCacheMu.Lock()
	defer flagCacheMu.Unlock()
	if f, ok := flagCache[target]; ok {
		return f
	}
	out, err := exec.Command(drover(t), target, "-h").Output()
	if err != nil {
		flagCache[target] = nil
		return nil
	}
	flags := map[string]flagInfo{}
	var cur *flagInfo
	s := bufio.NewScanner(bytes.NewReader(out))
	for s.Scan() {
		line := s.Text()
		if m := flagLine.FindStringSubmatch(line); m != nil {
			if cur != nil {
				flags[cur.name] = *cur
			}
			cur = &flagInfo{name: m[1], kind: m[2]}
			continue
		}
		if cur == nil || !strings.HasPrefix(line, "    \t") {
			continue
		}
		if m := secretRef.FindStringSubmatch(line); m != nil {
			cur.secretEnv = m[1]
		} else if m := envRef.FindStringSubmatch(line); m != nil {
			cur.env = m[1]
		}
		if m := defaultRef.FindStringSubmatch(line); m != nil {
			cur.def = m[1]
		}
	}
	if cur != nil {
		flags[cur.name] = *cur
	}
	if len(flags) == 0 {
		t.Fatalf("drover %s -h: no flags parsed from:\n%s", target, out)
	}
	flagCache[target] = flags
	return flags
}
