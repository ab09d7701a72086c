// Package endpoints turns the endpoint lists of drover's flags into the
// endpoints a component connects to, and keeps them current as routers come
// and go. It is the one place where the frontend's drainer, the storage
// writers and the livefeed learn which routers exist.
//
// # Endpoint forms
//
//   - tcp://host:port (and ipc://, inproc://): one endpoint, connected to as
//     given. A host name in it is resolved by each connection attempt, as
//     before; it always names one router.
//   - dns+tcp://name:port: every address the name resolves to (A and AAAA
//     records), each as tcp://address:port. The name is resolved again every
//     [Config.Interval] (-resolve-interval, default 10 s), and the component
//     connects to the addresses that appear and disconnects from those that
//     disappear, without a restart.
//
// A list may mix both forms; the result is their union, sorted, without
// duplicates. In Kubernetes, dns+tcp:// names a headless Service of the
// router StatefulSet, whose DNS name resolves to the address of every router
// pod (docs/deploy.md, "How every frontend reaches every router"):
//
//	-routers dns+tcp://drover-router-ingest:5555
//
// # What a failed lookup does
//
// A lookup that fails (a timeout, a server error, or "no such host") keeps
// the addresses that name had: a DNS outage or a moment in which a headless
// Service has no pod must not disconnect a writer from routers that hold its
// data. The failure is logged (once per episode, with the name) and counted
// in drover_endpoints_lookup_failures_total{consumer, name}. A name that has
// never resolved contributes nothing until it does; the component runs, and
// says so in its readiness (no router connected). Endpoints leave the list
// only when a lookup succeeds without them.
//
// # Following scale-out and scale-in
//
// A router pod that appears is connected to within one interval plus what
// the DNS server caches (CoreDNS: 30 s by default, the TTL of its answers).
// One that disappears is disconnected: the drainer gives back what it had in
// flight there (sent again elsewhere, recognised as duplicates if it was
// stored), a writer stops subscribing. Since a disappearing address ends
// the subscription, the Services that writers and livefeeds follow list
// every router pod that exists, ready or not (publishNotReadyAddresses), and
// only the frontends' Service follows readiness and the drain label; see
// docs/deploy.md for scale-in.
//
// # DNS server
//
// Lookups use the system's resolver (/etc/resolv.conf, its search domains:
// a short Service name works inside its namespace). [Config.Server]
// (-dns-server host:port) asks one server instead, over UDP and TCP, for a
// DNS that does not run on port 53 (Consul's, a test's).
package endpoints
