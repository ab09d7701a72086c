// Package livefeed serves drover's live view. It subscribes to the live.
// lane of every router, keeps the latest state of every vehicle, and serves
// web and mobile clients over WebSocket, each with its own filter (devices,
// fleet, map area), plus the built-in live map page. docs/live-api.md is the
// client's reference.
//
// The live lane is best effort: a reading missed here is still stored by the
// storage writers. A slow client gets the latest state per vehicle
// (conflation) rather than a growing backlog, and what is dropped is counted.
//
// The package is a library: cmd/drover builds a [Feed] from a [Config] with
// [New] and runs it with [Feed.Run].
//
// # The map page
//
// The page at / is built from livefeed/map/ (drover's code) and npm
// packages (Leaflet, supercluster, topojson-client, Natural Earth's
// world-atlas) by scripts/build-map.sh into web/dist, which go:embed takes
// when it exists; none of it is committed. Without it the binary serves
// web/placeholder, a page saying how to build the map ([MapBundled] says
// which). The page reads map-config.json ([MapConfig]: tiles, geofences),
// and its Content-Security-Policy allows only the configured origins
// besides its own (web.go, mapconfig.go).
//
// # Who may connect
//
// Clients present a token (internal/auth: bearer header or query); the
// clients file holds its SHA-256, the fleets it may see and, optionally,
// when it expires: an expired token is refused, and a connected client is
// closed with [CloseExpired] when its token expires. Without a clients file
// or a dev token, every client is refused, unless Config.Dev makes up a
// token for a development run. Failed authentications are limited per
// client address, as in the frontend. With -registry-api the livefeed also
// follows the control plane's live-client tokens (apitokens.go): scoped to
// fleets and narrowed to devices and a map area, revoked within seconds;
// and its device registry (registry.go), to take decommissioned and deleted
// devices off every map.
//
// # TLS
//
// With -tls-cert and -tls-key the livefeed serves wss:// and the map page
// over https:// itself (internal/tlsserve, as the frontend: the
// certificate reloaded on SIGHUP and on change without dropping clients,
// optional shared session ticket keys, limited handshakes); without them
// ws:// and http://, for development or behind an ingress that terminates
// TLS. -reuse-port lets several livefeeds share one port.
//
// # How an update travels
//
// One goroutine per router endpoint reads its zmq4 SUB socket (ingest.go),
// connected over the live link's mutual TLS under the cluster key
// (Config.Links, -cluster-key-file; docs/security.md),
// decodes each telemetry.PublishBatch and applies its records to the vehicle
// store (state.go): a sharded map of immutable vehicle states, where a
// reading older than the state (device time, then seq) is ignored. Each new
// state is encoded to JSON once, there. The changes are then offered to the
// clients whose fleets include the vehicle (the hub, indexed by fleet).
//
// Offering never waits for a client (client.go): under the client's lock it
// puts the state in a map keyed by vehicle, replacing one not yet written
// (conflation), or in a second map when the client's per-vehicle rate limit
// holds it back, and wakes the client's writer. The writer, one goroutine
// per client, takes what is due and writes it at the client's pace: one
// update message with every vehicle due, built by copying the shared JSON
// bytes into a buffer from a pool shared by all writers and written with
// one writev(2). Writes may be paced (Config.SendInterval, off by default): after an
// update message, what becomes due within the interval waits, conflated,
// for the next, and offers do not wake the writer meanwhile; so a busy
// client costs at most one wake-up and one write per interval however many
// batches the routers send, and an update after a quiet interval goes out
// at once. Snapshots, alerts and errors are not held back. A client whose
// backlog of due vehicles stays above Config.SlowBacklog for
// Config.SlowTimeout is told and closed; the rest of the feed never
// notices it.
//
// # Shared streams
//
// Clients with the same scope, filter and rate that keep up share a stream
// (stream.go; Config.SharedStreams, on by default): the stream has a
// client's conflation state and is offered and taken like one, but its
// update message is built once, as a gorilla PreparedMessage (framed once,
// and compressed once for the members that negotiated permessage-deflate,
// Config.Compression), and handed to every member; a member's writer
// writes those bytes, so it costs a wake-up and a write per message and
// nothing per vehicle. A client joins when its own path has drained (its
// snapshot written, nothing due or held) and its key has a stream or a
// second client; a message the stream took before the join is not given
// to it, since its own path may already have written newer states (the
// latest state of a vehicle may therefore come twice around a join). A
// member with 4 MiB of the stream's messages not yet written leaves: those
// are dropped and it is due the latest state of every vehicle the stream
// has shown, has due or holds, or removed in them (conflation, as for any
// client that falls behind); on its own path the slow-client rule applies,
// and once it has caught up it joins again. Subscribing again, or
// unsubscribing, takes a client out of its stream first. Alerts reach a
// member through its stream's entry in the hub, one per member.
//
// A subscribe holds the client's updates, walks the store for the snapshot,
// and queues the snapshot ahead of the updates that came in meanwhile, so a
// client sees a snapshot and then only newer states. The client's scope (the
// fleets of its token) is checked on every path: the hub only offers
// vehicles of its fleets, the offer checks again, and the snapshot walk
// checks each vehicle.
package livefeed
