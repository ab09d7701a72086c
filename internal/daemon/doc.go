// Package daemon is the process plumbing that every drover component and
// cmd/drover share, so that each target of the binary starts, reports and
// stops the same way:
//
//   - flags with environment fallback ([BindEnv]) and list-valued flags
//     ([StringList]), because every endpoint is a list;
//   - structured logging set from flags ([LogConfig]);
//   - secret flags ([SecretVar]): taken from the environment or a file,
//     refused on the command line ([CheckSecrets]), never shown by -h;
//   - the operations HTTP server ([Ops]) with /metrics, /healthz, /readyz and,
//     when asked, /debug/pprof/; on loopback by default, /metrics and pprof
//     behind an optional bearer token;
//   - a run group ([Group]) that starts components together and stops them in
//     reverse order under a shutdown deadline;
//   - signal handling ([SignalContext]): the first SIGINT or SIGTERM starts a
//     graceful stop, a second one exits at once.
//
// Nothing here knows about telemetry; components receive a logger and a
// Prometheus registerer and return errors, and this package does the rest.
package daemon
