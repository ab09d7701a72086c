// Package tlsserve is the TLS of drover's WebSocket servers (the
// frontend's devices, the livefeed's clients): one place for the
// certificate and its reloads, session ticket keys shared by replicas,
// client certificates, SO_REUSEPORT and the limits on handshakes.
//
// # Contract
//
//   - [New] reads the certificate chain and key (PEM), the client CAs and
//     the ticket keys, or fails: a server told to serve TLS does not start
//     without it. [Server.Run] reads them again on SIGHUP and when a file
//     changes (polled: modification time, size, or another file renamed
//     over it, as certificate managers and Kubernetes Secret volumes do). A
//     reload builds a whole new tls.Config and swaps it in atomically: every
//     handshake from then on gets it; connections already open keep what
//     they negotiated and are never dropped. A reload that fails (a key that
//     does not match, half-written files) is logged and counted, and the
//     configuration in force stays; the next change is tried again.
//   - Session tickets: with a ticket key file (the cluster key file's
//     format: base64 of 32 random bytes a line; the first encrypts new
//     tickets, every one decrypts), every process reading it resumes the
//     sessions of the others, and a restarted process those it issued
//     before. Rotation without full-handshake storms is the cluster key's
//     three steps: add the new key second everywhere, then move it first,
//     then drop the old one once its tickets are no longer wanted (Go
//     honours a ticket for at most 7 days). Without the file, Go makes its
//     own keys per process: a restart or a move to another replica turns
//     every resumption into a full handshake.
//   - TLS 1.2 and 1.3 (-tls-min-version); Go's cipher suites and key
//     exchanges (X25519MLKEM768 first for clients that offer it); HTTP/1.1
//     only (WebSockets upgrade over it). ECDSA P-256 certificates are
//     recommended: scripts/make-test-certs.sh makes them.
//   - [Listener] does the handshakes before the HTTP server sees a
//     connection, under [Limits]: a budget of full handshakes a second
//     (a TLS 1.2 resumption costs less, [HandshakeCost]), a bound on
//     handshakes in progress, and a bounded backlog of accepted
//     connections waiting, each for at most half the handshake timeout.
//     While the backlog is full no connection is accepted: the kernel's
//     accept queue holds the next ones (and past it the clients' TCP
//     retries their SYNs), so that a device is never refused with a
//     failed handshake, which costs a Go client its session ticket. A
//     connection that waited too long, or whose client closed it while
//     it waited, is closed before its handshake (counted by reason):
//     without TLS there is no HTTP to say "retry later" in. The owner
//     scales the budget down while its CPU is short
//     ([Listener.SetRateFactor]).
//   - [Listen] binds with SO_REUSEPORT on request, so that several
//     processes share one port.
//
// Metrics, under the owner's namespace (drover_frontend_tls_*,
// drover_livefeed_tls_*): reloads_total{result}, certificate_expiry_timestamp_seconds,
// handshakes_total{result="full|resumed|failed"}, handshake_refusals_total{reason="wait|gone"},
// handshakes_in_progress, handshakes_waiting, accept_queue (the kernel's, Linux),
// handshake_rate, handshake_seconds.
package tlsserve
