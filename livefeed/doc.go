// Package livefeed serves drover's live view. It subscribes to the live.
// lane of every router, keeps the latest state of every vehicle, and serves
// web and mobile clients over WebSocket, each with its own filter (devices,
// fleet, map area), plus the built-in live map page.
//
// The live lane is best effort: a reading missed here is still stored by the
// storage writers. A slow client gets the latest state per vehicle
// (conflation) rather than a growing backlog, and what is dropped is counted.
//
// The package is a library: cmd/drover builds a [Feed] from a [Config] with
// [New] and runs it with [Feed.Run].
package livefeed
