// Package k8stest holds the tests of drover's Kubernetes manifests (k8s/):
// a Go module of its own, like internal/browsertest, so that kustomize and
// the Kubernetes API types stay out of drover's go.mod.
//
//   - TestManifestsMatchBinary renders every overlay with kustomize (as a
//     library), decodes every object strictly into k8s.io/api types (an
//     unknown or misspelt field fails), and checks every drover container
//     against the real binary: each argument and environment variable is a
//     flag of `drover <target>` (parsed from its -h), each port is one the
//     process listens on, each probe path one its ops server serves, each
//     file flag points into a mounted volume, each directory it writes is on
//     a writable volume, and much that an SRE would otherwise find in
//     production (restricted pod security, grace periods above the
//     shutdown deadline, PodDisruptionBudgets, Services that select pods).
//   - TestKubePlayRollingUpdate plays the dev overlay with podman kube play
//     (each StatefulSet ordinal as a Pod with its PVC as a named volume) and
//     performs a rolling update of every workload, the way the StatefulSet
//     and Deployment controllers would (and the kubelet: a pod's containers
//     stop before its network), while simulated devices send: nothing
//     acked is lost, every device is moved by a stopping frontend (1012),
//     and none waits for an ack three quarters of its ack timeout. It is
//     provisioned as docs/deploy.md says: the api over HTTPS with a CA the test makes, a follower's key made
//     through it, the devices registered through it, and every follower
//     (frontends, routers, livefeed, alert engine) on https:// with that
//     key and CA. docs/deploy.md, "What is tested here", says
//     what this does not exercise (no apiserver, scheduler, kubelet probes
//     or network policies).
package k8stest
