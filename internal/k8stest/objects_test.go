package k8stest

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/drover-telemetry/drover/internal/capacity"
)

// checkServices: every Service selects pods of the overlay, and each of
// its target ports is a port those pods declare.
func checkServices(t *testing.T, r *rendered) {
	t.Helper()
	for _, svc := range r.services {
		sel := labels.SelectorFromSet(svc.Spec.Selector)
		var matched []workload
		for _, w := range r.workloads() {
			if len(svc.Spec.Selector) > 0 && sel.Matches(labels.Set(w.template.Labels)) {
				matched = append(matched, w)
			}
		}
		if len(matched) == 0 {
			t.Errorf("%s Service %s selects no pod (%v)", r.overlay, svc.Name, svc.Spec.Selector)
			continue
		}
		for _, p := range svc.Spec.Ports {
			for _, w := range matched {
				ok := false
				for _, c := range w.template.Spec.Containers {
					_, found := portNumber(c, p.TargetPort.StrVal, p.TargetPort.IntVal)
					ok = ok || found
				}
				if !ok {
					t.Errorf("%s Service %s port %s: targetPort %s is no port of %s/%s", r.overlay, svc.Name, p.Name, p.TargetPort.String(), w.kind, w.name)
				}
			}
		}
	}
	for _, s := range r.statefulSets {
		svc, ok := r.services[s.Spec.ServiceName]
		if !ok || svc.Spec.ClusterIP != corev1.ClusterIPNone {
			t.Errorf("%s StatefulSet %s: serviceName %q is not a headless Service of the overlay (its pods' DNS names)", r.overlay, s.Name, s.Spec.ServiceName)
		}
	}
}

// checkPDBs: every drover workload is covered by exactly one
// PodDisruptionBudget that lets at most one pod go at a time.
func checkPDBs(t *testing.T, r *rendered) {
	t.Helper()
	for _, w := range r.workloads() {
		if !slices.ContainsFunc(w.template.Spec.Containers, isDrover) {
			continue
		}
		var cover []string
		for _, p := range r.pdbs {
			if p.Spec.Selector != nil && labels.SelectorFromSet(p.Spec.Selector.MatchLabels).Matches(labels.Set(w.template.Labels)) {
				cover = append(cover, p.Name)
				if p.Spec.MaxUnavailable == nil || p.Spec.MaxUnavailable.IntValue() != 1 {
					t.Errorf("%s PodDisruptionBudget %s: maxUnavailable %v; want 1", r.overlay, p.Name, p.Spec.MaxUnavailable)
				}
			}
		}
		if len(cover) != 1 {
			t.Errorf("%s %s/%s: covered by PodDisruptionBudgets %v; want exactly one", r.overlay, w.kind, w.name, cover)
		}
	}
}

// checkNetworkPolicies: every drover pod is under the default deny, every
// port it declares is opened by some policy, and the routers' ZeroMQ ports
// only to drover's own pods.
func checkNetworkPolicies(t *testing.T, r *rendered) {
	t.Helper()
	for _, d := range droverContainers(t, r) {
		podLabels := labels.Set(d.w.template.Labels)
		denied := false
		open := map[int32][]string{} // port → who may reach it ("anyone" or a description)
		for _, np := range r.policies {
			sel, err := metav1Selector(np.Spec.PodSelector.MatchLabels)
			if err != nil || !sel.Matches(podLabels) {
				continue
			}
			if len(np.Spec.Ingress) == 0 && slices.Contains(np.Spec.PolicyTypes, "Ingress") {
				denied = true
			}
			for _, rule := range np.Spec.Ingress {
				who := "anyone"
				if len(rule.From) > 0 {
					var parts []string
					for _, f := range rule.From {
						switch {
						case f.PodSelector != nil && f.NamespaceSelector == nil:
							parts = append(parts, "pods "+labels.Set(f.PodSelector.MatchLabels).String())
						case f.NamespaceSelector != nil:
							parts = append(parts, "namespaces "+labels.Set(f.NamespaceSelector.MatchLabels).String())
						default:
							parts = append(parts, "addresses")
						}
					}
					who = strings.Join(parts, ", ")
				}
				for _, p := range rule.Ports {
					if p.Port != nil {
						port, _ := portNumber(d.c, p.Port.StrVal, p.Port.IntVal)
						open[port] = append(open[port], who)
					}
				}
			}
		}
		if !denied {
			t.Errorf("%s: no default-deny NetworkPolicy selects the pod", d.where(r))
		}
		for _, p := range d.c.Ports {
			who, ok := open[p.ContainerPort]
			if !ok {
				t.Errorf("%s: port %s (%d) is opened by no NetworkPolicy", d.where(r), p.Name, p.ContainerPort)
				continue
			}
			if d.target == "router" && p.Name != "ops" {
				for _, w := range who {
					if !strings.HasPrefix(w, "pods app.kubernetes.io/component=") {
						t.Errorf("%s: router port %s open to %s: only drover's own tiers may reach it", d.where(r), p.Name, w)
					}
				}
			}
		}
	}
}

func metav1Selector(m map[string]string) (labels.Selector, error) {
	return labels.SelectorFromSet(m), nil
}

// checkExternal: every Secret and ConfigMap a pod needs that the overlay
// does not make is named in docs/deploy.md, which tells how to make it.
func checkExternal(t *testing.T, r *rendered, deployDoc string) {
	t.Helper()
	for _, w := range r.workloads() {
		need := map[string]string{}
		for _, v := range w.template.Spec.Volumes {
			switch {
			case v.Secret != nil:
				need[v.Secret.SecretName] = "Secret"
			case v.ConfigMap != nil:
				need[v.ConfigMap.Name] = "ConfigMap"
			}
		}
		for _, c := range w.template.Spec.Containers {
			for _, e := range c.Env {
				if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
					need[e.ValueFrom.SecretKeyRef.Name] = "Secret"
				}
			}
		}
		for name, kind := range need {
			_, isSecret := r.secrets[name]
			_, isCM := r.configMaps[name]
			if (kind == "Secret" && isSecret) || (kind == "ConfigMap" && isCM) {
				continue
			}
			if !strings.Contains(deployDoc, name) {
				t.Errorf("%s %s/%s needs %s %s, which the overlay does not make and docs/deploy.md does not mention", r.overlay, w.kind, w.name, kind, name)
			}
		}
	}
}

// checkCapacity: the production overlay is scenario (c) of the capacity
// model, as `go run ./scripts/capacity` computes it from the measured
// figures. When a figure changes, the overlay must follow (or the
// document say why not).
func checkCapacity(t *testing.T, r *rendered) {
	t.Helper()
	var sc capacity.Scenario
	for _, s := range capacity.Scenarios() {
		if s.Name == "c" {
			sc = s
		}
	}
	plan := capacity.Compute(sc, capacity.Measured(), capacity.DefaultPolicy())
	want := map[string]capacity.Pods{
		"drover-frontend": plan.Frontend, "drover-router": plan.Router, "drover-writer-influx": plan.WriterInflux,
		"drover-writer-lake": plan.WriterLake, "drover-livefeed": plan.Livefeed, "drover-api": plan.API,
	}
	for _, w := range r.workloads() {
		p, ok := want[w.name]
		if !ok {
			continue
		}
		where := fmt.Sprintf("production %s/%s", w.kind, w.name)
		if int(w.replicas) != p.Replicas {
			t.Errorf("%s: %d replicas; the capacity model says %d", where, w.replicas, p.Replicas)
		}
		c := w.template.Spec.Containers[0]
		for _, q := range []struct {
			what      string
			got, want resource.Quantity
		}{
			{"CPU request", *c.Resources.Requests.Cpu(), *resource.NewMilliQuantity(p.CPUMilli, resource.DecimalSI)},
			{"memory request", *c.Resources.Requests.Memory(), *resource.NewQuantity(p.Memory, resource.BinarySI)},
			{"memory limit", *c.Resources.Limits.Memory(), *resource.NewQuantity(p.MemoryLimit, resource.BinarySI)},
		} {
			if q.got.Cmp(q.want) != 0 {
				t.Errorf("%s: %s %s; the capacity model says %s", where, q.what, q.got.String(), q.want.String())
			}
		}
		if p.Volume > 0 {
			if len(w.claims) == 0 {
				t.Errorf("%s: no volume; the capacity model says %s", where, capacity.Quantity(p.Volume))
				continue
			}
			got := w.claims[0].Spec.Resources.Requests[corev1.ResourceStorage]
			if got.Cmp(*resource.NewQuantity(p.Volume, resource.BinarySI)) != 0 {
				t.Errorf("%s: volume %s; the capacity model says %s", where, got.String(), capacity.Quantity(p.Volume))
			}
		}
	}
	if got := r.configMaps["drover-frontend"].Data["DROVER_FRONTEND_MAX_CONNECTIONS"]; got != fmt.Sprint(plan.MaxConnections) {
		t.Errorf("production: DROVER_FRONTEND_MAX_CONNECTIONS %s; the capacity model says %d", got, plan.MaxConnections)
	}
}
