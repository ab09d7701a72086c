package apiclient

import "time"

// The feed's wire format, one definition for both sides: the api package
// serves these types and followers read them. docs/api.md "The change
// feed" is the protocol.

// FeedDevice is one device as followers see it: everything a frontend
// needs to authenticate it and a router to enrich its readings, and
// nothing else. Short keys: a snapshot carries a million of these.
type FeedDevice struct {
	// V is the version of the device's last change.
	V  int64  `json:"v"`
	ID string `json:"id"`
	// Del marks a deleted device (a tombstone): forget it.
	Del bool `json:"del,omitempty"`
	// State is active, suspended or decommissioned.
	State  string `json:"s,omitempty"`
	Fleet  string `json:"f,omitempty"`
	Class  string `json:"c,omitempty"`
	Region string `json:"r,omitempty"`
	// H is the hex SHA-256 of the current token; PH of the previous one,
	// valid until PU (unix milliseconds), the end of a rotation's overlap.
	H  string `json:"h,omitempty"`
	PH string `json:"ph,omitempty"`
	PU int64  `json:"pu,omitempty"`
}

// SnapshotFormat is the snapshot format this build reads and writes.
const SnapshotFormat = 1

// SnapshotLine is a line of a snapshot that is not a device: the header
// (first line) or the trailer (last line; a snapshot without it was cut).
type SnapshotLine struct {
	Snapshot *SnapshotHeader `json:"snapshot,omitempty"`
	End      *SnapshotEnd    `json:"end,omitempty"`
}

// SnapshotHeader is a snapshot's first line.
type SnapshotHeader struct {
	// Version: the devices reflect at least every change up to it.
	Version int64 `json:"version"`
	Format  int   `json:"format"`
	// Feed identifies the database the feed comes from: a follower that
	// sees another one takes a new snapshot rather than mix two
	// registries.
	Feed string `json:"feed,omitempty"`
}

// SnapshotEnd is a snapshot's last line.
type SnapshotEnd struct {
	Devices int `json:"devices"`
}

// Changes is the answer of GET /v1/feed/changes.
type Changes struct {
	// Feed identifies the database (see SnapshotHeader.Feed).
	Feed string `json:"feed,omitempty"`
	// Version is what the follower has seen after applying Changes: its
	// next since.
	Version int64        `json:"version"`
	Changes []FeedDevice `json:"changes"`
	// More says Changes was cut at the limit: ask again at once.
	More bool `json:"more"`
}

// MaxPresenceReports is the most reports one presence request carries.
const MaxPresenceReports = 10000

// PresenceReport is one device's presence, as a frontend reports it.
type PresenceReport struct {
	ID         string    `json:"id"`
	SeenAt     time.Time `json:"seen_at"`
	RemoteAddr string    `json:"remote_addr"`
	Connected  bool      `json:"connected"`
	// Firmware is the version the device said it runs when it connected
	// (X-Drover-Firmware); "" when it named none.
	Firmware string `json:"firmware,omitempty"`
}

// PresenceBatch is the body of POST /v1/feed/presence.
type PresenceBatch struct {
	Frontend string           `json:"frontend"`
	Reports  []PresenceReport `json:"reports"`
}

// LiveTokens is the answer of GET /v1/feed/live-tokens.
type LiveTokens struct {
	Feed    string `json:"feed,omitempty"`
	Version int64  `json:"version"`
	// Changed says Tokens is the set in force at Version; false: nothing
	// changed after since (Tokens is empty), keep what you hold.
	Changed bool        `json:"changed"`
	Tokens  []LiveToken `json:"tokens"`
}

// LiveToken is a live-client token in force (neither revoked nor
// expired when the answer was made) as the livefeed needs it.
type LiveToken struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	// H is the hex SHA-256 of the token.
	H string `json:"h"`
	// Fleets the client may see; "*" is every fleet.
	Fleets []string `json:"fleets"`
	// Devices, when not empty, narrows the client to these devices.
	Devices []string `json:"devices,omitempty"`
	// Area, when set, narrows the client to vehicles inside it.
	Area *Area `json:"area,omitempty"`
	// ExpiresAt is when the token stops working (unix milliseconds).
	ExpiresAt int64 `json:"expires_at"`
}

// Area is a map rectangle in degrees (WGS 84).
type Area struct {
	MinLat float64 `json:"min_lat"`
	MinLon float64 `json:"min_lon"`
	MaxLat float64 `json:"max_lat"`
	MaxLon float64 `json:"max_lon"`
}
