// Package auth is what every drover edge that takes a secret from a peer
// shares, so that there is one implementation of each and one place to
// review them:
//
//   - token hashing and constant-time comparison ([Hash], [Digest]): a
//     token is stored only as its SHA-256, written as 64 hex digits (the
//     format of the device registry's token_sha256 and of the livefeed's
//     clients file, which must stay readable);
//   - bearer parsing ([Bearer], [RequestToken]): "Authorization: Bearer",
//     else a query parameter for clients that cannot set headers;
//   - the client address of a request ([Proxies]): the TCP peer, or with
//     trusted proxies configured, the first untrusted hop of
//     X-Forwarded-For; and the key under which failures of that address
//     are counted ([SourceKey]: an IPv6 client counts per /64, which is
//     what one subscriber gets);
//   - a failure limiter ([Limiter]): after N authentication failures of one
//     key within a window the key is blocked for a while, doubling with
//     each repeat up to a cap; refused requests cost a map lookup, and the
//     memory it holds is bounded however many keys an attacker invents.
//
// The frontend (devices) and the livefeed (live clients) use it; the
// control plane is meant to.
package auth
