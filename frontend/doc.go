// Package frontend is the device-facing edge of drover: a WebSocket server
// that authenticates devices, validates their frames, appends their readings
// to a local durable queue, and acks each device with the highest sequence
// that is on disk (after fsync, shared by a group commit). A drainer
// (internal/forward) sends queued batches to every router over one ZeroMQ
// DEALER per router, each a cluster link (mutual TLS 1.3 under the cluster
// key: Config.Links, -cluster-key-file; docs/security.md), and pops a batch
// only once a router has acked it, which a router does only once the batch
// is on its own disk.
//
// # How a device talks to it
//
// A device opens a WebSocket to /v1/ingest, ws:// or, with a certificate
// (Config.TLS, -tls-cert and -tls-key), wss:// served by the frontend
// itself (internal/tlsserve: the certificate reloaded on SIGHUP and on
// change without dropping connections, session tickets under keys shared
// by every replica so that a device resumes its session after a restart
// or a move, handshakes limited). It authenticates with its id and token,
// in the X-Drover-Device and "Authorization: Bearer" headers or, for
// clients that cannot set headers, in the device and token query
// parameters; or, with -device-auth cert (or cert-or-token), with a client
// certificate of -tls-client-ca whose common name is its id (tls.go). It sends
// Uplink frames (binary protobuf, or JSON in text messages; see
// docs/wire-format.md) and receives, in the same encoding, one cumulative Ack
// per frame once the frame is stored. A frame is stored whole or not at all,
// as one queue entry holding a telemetry.Batch of Records. Readings whose seq
// is at or below the device's acked sequence are resends: they are acked
// again and not stored again. Frames a device sent back to back (already in
// the socket) are begun together, share group commits, and have their acks
// written in one write(2), still one per frame and in order (ahead.go,
// settle.go); nothing is held while a read would wait. docs/ingest.md is the
// device maker's guide: auth, acks, the resend rule, the close codes and the
// limits.
//
// # Refusals
//
// Bad input gets a clear answer and is counted
// (drover_frontend_refusals_total{reason}): before the upgrade, HTTP 400 for
// a device id that breaks the one definition (telemetry.ValidateDeviceID,
// checked before any registry lookup), HTTP 401 for an unknown device or a
// bad token (one answer for both, so that device ids cannot be enumerated;
// the metric keeps the reason), HTTP 403 with the reason for the right
// token of a suspended or decommissioned device, HTTP 429 with a Retry-After for a client
// address or device id that failed to authenticate too often (internal/auth's
// limiter, checked before any hashing), HTTP 429 with a Retry-After for a
// device that reconnects too often (flapping), HTTP 503 with a Retry-After
// giving the device its place in line when new connections come faster
// than the accept rate, and HTTP 503 with a jittered Retry-After when the
// connection limit is reached; after it, a WebSocket close code with a
// reason: 1007 invalid frame, 1008 rate limit, 1009 frame too large, 1012
// lame-duck stop (reconnect elsewhere), 1013 queue or disk full (nothing is
// acked, nothing is dropped), 1011 internal error, 4000 replaced by a newer
// connection of the same device, 4001 idle, 4401 token revoked (or a
// rotation's overlap ended), 4403 device suspended, decommissioned or
// removed.
//
// # Stampedes
//
// A herd of devices coming back at once (after an outage, a restart,
// another frontend's loss) must not take the CPU that the acks of the
// devices already connected need (admission.go, governor.go). New
// connections are let in at -accept-rate (GCRA: a burst, then evenly);
// one that comes too early is refused before any token hashing or
// registry lookup with 503 and a Retry-After that is its place in line ÷
// the rate, and that place is held for it, so that a herd spreads over
// herd ÷ rate seconds in the order it came. The rate in force follows the
// Go scheduler's delay: while its p99 is above -admission-delay-target,
// runnable read loops wait for a CPU, so the rate (and the TLS handshake
// budget) is cut; it grows back when the delay falls. Over TLS, handshakes
// wait for the handshake budget in a bounded backlog before any HTTP is
// possible (internal/tlsserve). A device that reconnects more than
// -flap-connects times within -flap-window is held back with 429 (checked
// after its token, so that the answer tells nothing to whoever lacks it),
// its count kept with its other per-device state.
//
// # The registry
//
// Devices are checked against a registry.Store: a file (-registry), or a
// copy of the control plane's registry that follows its change feed
// (-registry-api; registry.go), cached under the queue folder so that a
// restart while the API is down still serves. The frontend serves once a
// copy is in force. When the registry changes, the connections of the
// devices that changed are checked again (and, for a file reload, every
// connection) and those it no longer allows are closed once the frame they
// are storing is stored and acked; a connection made with a rotation's
// previous token is checked again when the overlap ends, and one made with
// a device certificate (-device-auth cert) only by the device's state.
// Following the control plane, the frontend also reports presence
// (presence.go): in batches, bounded, never on the ack path.
//
// # State kept in memory
//
// Per device: the highest acked sequence and two token buckets, one for live
// readings and a separate, larger one for backlog (readings older than
// BacklogAge, a store-and-forward flush after an outage). Connected devices
// are always kept; disconnected ones up to MaxIdleDevices, least recent
// forgotten first. Forgetting a device, or restarting, costs only duplicates
// downstream when the device resends (sinks drop them by (device, seq)), and
// a fresh rate budget.
//
// # Connections and memory
//
// The HTTP handler returns right after the upgrade (net/http then frees its
// request buffers); each connection then has exactly one goroutine, its read
// loop. Data messages are written under the connection's write lock
// (gorilla allows one writer at a time): acks by the read loop, commands and
// report acks by the commander.
// Keepalive pings are control frames written from a time.AfterFunc timer, not
// from a second goroutine, and only to a device that has sent no data frame
// for a ping interval. Read buffers are 256 bytes and write buffers come
// from a pool. TestIdleConnectionMemory measures the cost of an idle
// connection (about 6 KiB: 2.1 KiB heap, 4 KiB goroutine stack).
//
// # Commands
//
// A frontend that follows the control plane also delivers commands
// (commands.go, docs/commands.md): it long-polls GET
// /v1/frontends/{id}/commands for the commands of the devices it holds,
// writes each to its device in the device's encoding after checking its
// expiry (an expired command is never written), and posts the devices'
// reports, and the commands it could not write, back to the API; a device
// gets report_ack only once the API has stored its report. None of it is on
// the path of readings: reports wait in a bounded list (100,000) that one
// goroutine posts.
//
// Firmware downloads (firmware.go): GET /v1/firmware/{id} with the
// device's own credentials, passed on to the control plane under the
// follower key with Range and If-Range (resumable from any byte), served
// through one token bucket of FirmwareBytesPerSecond for all downloads.
//
// # The front door
//
// The device listener reads each new connection's request head itself
// (upgrade.go), into a pooled 4 KiB buffer: a WebSocket upgrade of the ingest
// path is served there, without net/http, whose per-connection buffers a
// hijacked connection never gives back (8–12 KiB of garbage a device
// connection). Anything else — firmware downloads, other paths, a head over
// 4 KiB — is handed to net/http with the bytes already read and the TLS
// state, and served as before. drover_frontend_requests_handed_to_net_http_total
// counts those.
//
// # Shutdown
//
// When Run's context ends (SIGTERM) the frontend reports not ready, stops
// listening, and then, the lame duck (lameduck.go), asks the connections
// one after another, spread over -lame-duck in a random order, to finish
// the frame they are storing, send its ack and close with 1012 (reconnect
// to another frontend), so that a rolling restart moves its devices at a
// pace the others can take. Then it closes what is left with 1001
// (http.Server.Shutdown does not see hijacked connections, so the frontend
// tracks them itself), by force after ShutdownGrace, stops the drainer,
// and closes the queue. What is in the queue stays on disk for the next
// start.
//
// # Many frontends on one machine
//
// A process holds at most so many open files (20,000 on the reference
// machine), so 100,000 devices on one host take several frontends. They
// share one port with -reuse-port (SO_REUSEPORT: the kernel spreads new
// connections over the processes) or listen on ports of their own; either
// way each has its own -queue-dir and -id.
//
// The package is a library: cmd/drover builds a [Frontend] from a [Config]
// with [New] and runs it with [Frontend.Run]; tests start it in-process on
// port 0 and find it with [Frontend.Addr].
package frontend
