package k8stest

import (
	"fmt"
	"net"
	"path"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// imageWorkDir is the image's working directory (Containerfile WORKDIR):
// relative paths in flags are resolved from it.
const imageWorkDir = "/var/lib/drover"

// queueTargets hold a durable queue: they must be StatefulSets with a
// volume per pod. "alerts" is the alert engine (k8s/base/alerts.yaml).
var queueTargets = map[string]bool{"frontend": true, "router": true, "storage-writer": true, "alerts": true}

// queueFlag is the flag naming the directory of a queue target's queue:
// the alert engine keeps its queue, snapshots and outbox under -data-dir.
func queueFlag(target string) string {
	if target == "alerts" {
		return "data-dir"
	}
	return "queue-dir"
}

// writtenFlags name directories and files the process creates and writes.
var writtenFlags = map[string]bool{"queue-dir": true, "lake-dir": true, "dead-letter-dir": true, "data-dir": true,
	"bootstrap-key-file": true, "sqlite-file": true}

// goRuntimeEnv are environment variables the Go runtime reads, allowed in
// any container.
var goRuntimeEnv = map[string]bool{"GOMEMLIMIT": true, "GOMAXPROCS": true, "GOGC": true, "GODEBUG": true}

// isDrover reports whether a container runs drover's image.
func isDrover(c corev1.Container) bool {
	img := c.Image
	if i := strings.LastIndex(img, "/"); i >= 0 {
		img = img[i+1:]
	}
	img, _, _ = strings.Cut(img, ":")
	img, _, _ = strings.Cut(img, "@")
	return img == "drover"
}

// dcontainer is a drover container with its effective configuration.
type dcontainer struct {
	w      workload
	c      corev1.Container
	target string
	flags  map[string]flagInfo
	set    map[string]string // flags given as arguments
	env    map[string]string // variable → value; secretKeyRef values are "<secret NAME/KEY>"
	envSrc map[string]string // variable → where it comes from
}

// where names the container in messages.
func (d dcontainer) where(r *rendered) string {
	return fmt.Sprintf("%s %s/%s container %s", r.overlay, d.w.kind, d.w.name, d.c.Name)
}

// value returns a flag's effective value: its argument, else its
// environment variable, else its default.
func (d dcontainer) value(name string) string {
	if v, ok := d.set[name]; ok {
		return v
	}
	if f, ok := d.flags[name]; ok {
		if v, ok := d.env[f.env]; ok && f.env != "" {
			return v
		}
		return f.def
	}
	return ""
}

// parseArgs splits -name=value, -name value and bare bool flags.
func parseArgs(args []string, flags map[string]flagInfo) (map[string]string, []error) {
	set := map[string]string{}
	var errs []error
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			errs = append(errs, fmt.Errorf("argument %q is not a flag", a))
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		f, ok := flags[name]
		if !ok {
			errs = append(errs, fmt.Errorf("-%s: not a flag of this target", name))
			continue
		}
		if !hasVal {
			if f.kind == "" { // a bool
				val = "true"
			} else if i+1 < len(args) {
				i++
				val = args[i]
			}
		}
		if _, dup := set[name]; dup {
			errs = append(errs, fmt.Errorf("-%s given twice", name))
		}
		set[name] = val
	}
	return set, errs
}

// droverContainers returns every drover container of the overlay with its
// flags; problems found on the way fail t.
func droverContainers(t *testing.T, r *rendered) []dcontainer {
	t.Helper()
	var out []dcontainer
	for _, w := range r.workloads() {
		for _, c := range w.template.Spec.Containers {
			if !isDrover(c) {
				continue
			}
			d := dcontainer{w: w, c: c, env: map[string]string{}, envSrc: map[string]string{}}
			if len(c.Command) > 0 {
				t.Errorf("%s: command %q replaces the image's entrypoint; give the target in args", d.where(r), c.Command)
			}
			if len(c.Args) == 0 {
				t.Errorf("%s: no args: the first names the target", d.where(r))
				continue
			}
			d.target = c.Args[0]
			d.flags = targetFlags(t, d.target)
			if d.flags == nil {
				t.Errorf("%s: `drover %s` is not a target of the binary", d.where(r), d.target)
				continue
			}
			var errs []error
			d.set, errs = parseArgs(c.Args[1:], d.flags)
			for _, e := range errs {
				t.Errorf("%s: %v", d.where(r), e)
			}
			for name := range d.set {
				if f := d.flags[name]; f.secretEnv != "" {
					t.Errorf("%s: -%s is a secret: never on the command line (use -%s-file)", d.where(r), name, name)
				}
			}
			for _, from := range c.EnvFrom {
				switch {
				case from.ConfigMapRef != nil:
					cm, ok := r.configMaps[from.ConfigMapRef.Name]
					if !ok {
						t.Errorf("%s: envFrom ConfigMap %s is not in the overlay", d.where(r), from.ConfigMapRef.Name)
						continue
					}
					for k, v := range cm.Data {
						d.env[from.Prefix+k], d.envSrc[from.Prefix+k] = v, "ConfigMap "+cm.Name
					}
				case from.SecretRef != nil:
					t.Errorf("%s: envFrom Secret %s: give secrets as files (-*-file from a mounted Secret)", d.where(r), from.SecretRef.Name)
				}
			}
			for _, e := range c.Env {
				switch {
				case e.ValueFrom == nil:
					d.env[e.Name], d.envSrc[e.Name] = e.Value, "env"
				case e.ValueFrom.SecretKeyRef != nil:
					ref := e.ValueFrom.SecretKeyRef
					d.env[e.Name], d.envSrc[e.Name] = "secret", "Secret "+ref.Name+"/"+ref.Key
				case e.ValueFrom.ConfigMapKeyRef != nil:
					ref := e.ValueFrom.ConfigMapKeyRef
					cm, ok := r.configMaps[ref.Name]
					if !ok {
						t.Errorf("%s: env %s: ConfigMap %s is not in the overlay", d.where(r), e.Name, ref.Name)
						continue
					}
					v, ok := cm.Data[ref.Key]
					if !ok {
						t.Errorf("%s: env %s: ConfigMap %s has no key %s", d.where(r), e.Name, ref.Name, ref.Key)
					}
					d.env[e.Name], d.envSrc[e.Name] = v, "ConfigMap "+ref.Name+"/"+ref.Key
				default:
					d.env[e.Name], d.envSrc[e.Name] = "downward", "downward API"
				}
			}
			out = append(out, d)
		}
	}
	return out
}

// checkEnv: every variable is one the target reads (a flag's, or the Go
// runtime's), and a secret's variable comes only from a Secret.
func checkEnv(t *testing.T, r *rendered, d dcontainer) {
	t.Helper()
	byEnv := map[string]flagInfo{}
	for _, f := range d.flags {
		if f.env != "" {
			byEnv[f.env] = f
		}
		if f.secretEnv != "" {
			byEnv[f.secretEnv] = f
		}
	}
	for name, src := range d.envSrc {
		f, ok := byEnv[name]
		switch {
		case goRuntimeEnv[name]:
		case !ok:
			t.Errorf("%s: environment variable %s (%s) is not read by drover %s: a typo or a flag that no longer exists",
				d.where(r), name, src, d.target)
		case f.secretEnv == name && !strings.HasPrefix(src, "Secret "):
			t.Errorf("%s: %s is a secret (-%s) but comes from %s: secrets come from Secrets", d.where(r), name, f.name, src)
		}
	}
}

// listenPorts returns the ports the process binds, by flag, from the
// effective values of its listen flags.
func listenPorts(d dcontainer) map[int32]string {
	ports := map[int32]string{}
	for name, f := range d.flags {
		if f.kind != "address" && f.kind != "endpoint" {
			continue
		}
		if !strings.Contains(name, "listen") && name != "live-pub" && name != "alert-pub" {
			continue
		}
		v := d.value(name)
		v = strings.TrimPrefix(v, "tcp://")
		host, port, err := net.SplitHostPort(v)
		if err != nil {
			continue
		}
		p, err := strconv.Atoi(port)
		if err != nil || p == 0 {
			continue
		}
		ports[int32(p)] = name + "=" + host
	}
	return ports
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// checkPorts: every declared port is one the process listens on, reachable
// from outside the pod; every port it listens on outside loopback is
// declared.
func checkPorts(t *testing.T, r *rendered, d dcontainer) {
	t.Helper()
	listens := listenPorts(d)
	declared := map[int32]bool{}
	for _, p := range d.c.Ports {
		declared[p.ContainerPort] = true
		how, ok := listens[p.ContainerPort]
		if !ok {
			t.Errorf("%s: port %s (%d) is not one drover %s listens on (%v)", d.where(r), p.Name, p.ContainerPort, d.target, listens)
			continue
		}
		if _, host, _ := strings.Cut(how, "="); isLoopback(host) {
			t.Errorf("%s: port %s (%d) is bound to loopback by -%s: nothing outside the pod reaches it", d.where(r), p.Name, p.ContainerPort, how)
		}
	}
	for p, how := range listens {
		if _, host, _ := strings.Cut(how, "="); !declared[p] && !isLoopback(host) {
			t.Errorf("%s: drover %s listens on %d (-%s) but the container does not declare it", d.where(r), d.target, p, how)
		}
	}
}

// portNumber resolves a probe's or Service's port (number or name) in c.
func portNumber(c corev1.Container, name string, num int32) (int32, bool) {
	if name == "" {
		return num, num != 0
	}
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort, true
		}
	}
	return 0, false
}

// opsPort returns the port of the container's -ops-listen.
func opsPort(d dcontainer) int32 {
	_, port, err := net.SplitHostPort(d.value("ops-listen"))
	if err != nil {
		return 0
	}
	p, _ := strconv.Atoi(port)
	return int32(p)
}

// mountOf returns the volume mount a path is in (the longest mount path
// that contains it), resolving relative paths from the image's WORKDIR.
func mountOf(c corev1.Container, p string) (corev1.VolumeMount, string, bool) {
	if !path.IsAbs(p) {
		p = path.Join(imageWorkDir, p)
	}
	p = path.Clean(p)
	var best corev1.VolumeMount
	found := false
	for _, m := range c.VolumeMounts {
		mp := path.Clean(m.MountPath)
		if (p == mp || strings.HasPrefix(p, mp+"/")) && len(mp) > len(best.MountPath) {
			best, found = m, true
		}
	}
	rel := strings.TrimPrefix(strings.TrimPrefix(p, path.Clean(best.MountPath)), "/")
	return best, rel, found
}

func volumeNamed(spec corev1.PodSpec, name string) (corev1.Volume, bool) {
	for _, v := range spec.Volumes {
		if v.Name == name {
			return v, true
		}
	}
	return corev1.Volume{}, false
}

func isPathKind(kind string) bool {
	switch kind {
	case "file", "directory", "folder", "path":
		return true
	}
	return false
}
