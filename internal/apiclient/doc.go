// Package apiclient is how drover's data path talks to its control plane
// (drover api) as a follower: the frontends and routers that follow the
// device registry (internal/registry's follower), the frontends' presence
// reports, and the livefeeds that follow live-client tokens. It holds the
// one definition of the feed's wire format (the api package serves the
// same types), the connection settings every follower shares
// (-registry-api, its key, its CA) and the disk cache envelope the
// followers keep their last copy in.
//
// # Connection
//
// A follower authenticates with an API key of a "follower" operator,
// never given on the command line: from $DROVER_<TARGET>_REGISTRY_API_KEY
// or -registry-api-key-file. The URL is https:// (the API's certificate
// checked against the system roots, or -registry-api-ca-file), or http://
// to a loopback address only: a follower key sent in clear over a network
// is a key given away.
//
// # The disk cache
//
// A cache file is written whole, atomically and durably
// (internal/atomicfile), and read back only if it is whole: a header line
// naming its kind and format, a JSON meta line (the feed it came from,
// its version, when it was written), the payload, and a trailer with the
// payload's length and CRC-32C. A file that fails any check is refused as
// a whole (ErrCacheDamaged), so that a torn or damaged cache can never
// put a half registry in force.
package apiclient
