// Package clusterlink authenticates and encrypts the links between drover's
// tiers: frontends → routers (ingest), routers → storage writers (store
// lane), routers → livefeeds (live lane). zmq4 v0.17.0 offers only the NULL
// and PLAIN ZMTP mechanisms (no CURVE), so the links run ZMTP over mutual
// TLS 1.3 instead, as a zmq4 transport. The threat model, the rotation
// procedure and what is not protected are in docs/security.md.
//
// # One secret: the cluster key file
//
// Every process of a deployment is given the same key file
// (-cluster-key-file, or DROVER_<COMMAND>_CLUSTER_KEY_FILE): base64 keys
// of 32 random bytes, one a line, '#' comments and blank lines ignored
// ([ParseKeys]). The first key is current; the others are still accepted.
// From each key, HKDF-SHA256 (salt "drover cluster-link v1") derives an
// Ed25519 key and a self-signed certificate authority, deterministically:
// the same key gives the same CA in every process, so nothing but the key
// is distributed. Each process mints its own certificate (a fresh Ed25519
// key, 24 hours, renewed after 12) issued by the current CA, naming its
// role (DNS name <role>.drover.internal) and its id (common name), and
// trusts the CAs of every key in its file.
//
// A process whose file holds [new, old] signs with new and sends, with its
// certificate, a cross-certificate of the new CA issued by the old one: a
// peer that trusts only old validates the chain leaf → new CA (issued by
// old) → old CA, and one that trusts new stops at the new CA. So a key
// rotates in three steps, each rolled out at its own pace, without an
// outage: add the new key second everywhere, move it first everywhere,
// remove the old one. The file is read again when it changes (checked at
// most every 5 s, when a connection is made): no restart is needed.
//
// drover all needs no file: it makes one random key in memory at start
// (Config.Keys), so that even its loopback links refuse other local users.
//
// # Roles and links
//
// A [Link] names its server role (always the router, which binds) and its
// client role. The server requires a client certificate from one of its
// CAs and checks the client's role; the client checks the server's
// certificate for router.drover.internal whatever address it dialled.
// Roles catch misconfiguration (a storage writer pointed at the ingest
// port is refused: wrong_role); they are not a security boundary, since
// every holder of the cluster key can mint a certificate of any role.
//
// # How it plugs into zmq4
//
// zmq4 picks a transport by the endpoint's scheme, from a process-global
// registry that never forgets. [Security.Endpoint] registers, once per
// Security and link, a transport under a scheme of its own
// (tcp+drover-ingest-tls-7) and rewrites tcp://host:port to it, so that
// flags and docs keep tcp:// endpoints and several keys (drover all, tests)
// live in one process; [Security.Close] detaches the transports.
// [Security.Listen] gives the same listener to code that speaks ZMTP
// itself on zmq4.Open (the router's live publisher). ipc:// is secured
// the same way; inproc:// never leaves the process and is left as is.
//
// The listener accepts TCP connections in a goroutine of its own and runs
// each connection's TLS handshake, and waits for its ZMTP signature, in a
// goroutine of the connection's (at most 64 at once; past that a new
// connection is closed, counted as too_many). zmq4's accept loop, which
// opens ZMTP on one connection at a time, only ever sees connections that
// did their part: a peer that connects and stalls holds up nobody, and is
// dropped after the handshake timeout (10 s).
//
// Every connection, TLS or not, is wrapped in a ZMTP-aware connection that
//
//   - refuses a message over 64 MiB ([MaxMessageBytes]) by its frame
//     headers, before zmq4 allocates the size a header claims (a header of
//     2^62 bytes makes zmq4 v0.17.0 panic in makeslice);
//   - checks the peer's READY command before zmq4 parses it (zmq4 indexes
//     its metadata without bounds checks: a crafted READY panics);
//   - closes the connection when its ZMTP handshake has not ended in time
//     (zmq4 never times it out, and leaves a connection whose handshake
//     failed open);
//   - writes each ZeroMQ message with one write under a lock: zmq4 writes a
//     message in several calls and lets a timed-out Send go on in the
//     background while the next one starts; TCP's writev kept messages
//     whole, TLS would interleave them. One write per message is also one
//     TLS record rather than one per frame header and body.
//
// With -insecure-links (Config.Insecure) the same transports and wrapper
// run without TLS: plain ZMTP NULL that libzmq peers (pyzmq) speak, with
// the frame, READY and timeout checks, and no authentication at all. It is
// announced with a warning at start and drover_link_insecure{role} = 1.
//
// # Refusals
//
// A refused or dropped connection is counted in
// drover_link_refused_total{link, side, reason} (reasons: not_tls,
// no_certificate, unknown_authority, wrong_role, expired, peer_refused,
// not_zmtp, protocol, too_large, timeout, too_many, closed, other) and
// logged at warning level, at most once per peer address, link, side and
// reason every 10 minutes, with a hint of what to check; it never stops
// the process. Completed handshakes are counted in
// drover_link_handshakes_total{link, side}.
package clusterlink
