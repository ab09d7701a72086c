package auth

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
)

// Digest is the SHA-256 of a token: what drover stores and compares
// instead of the token itself.
type Digest [sha256.Size]byte

// Hash returns the digest of token.
func Hash(token string) Digest { return sha256.Sum256([]byte(token)) }

// HashHex returns the digest of token as 64 lower-case hex digits, the
// format of token_sha256 in the device registry and the clients file.
func HashHex(token string) string { return Hash(token).String() }

// ParseDigest reads 64 hex digits (either case), as HashHex writes them.
func ParseDigest(s string) (Digest, error) {
	var d Digest
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(d) {
		return d, errors.New("want 64 hex characters (a SHA-256)")
	}
	copy(d[:], b)
	return d, nil
}

// String returns the digest as 64 lower-case hex digits.
func (d Digest) String() string { return hex.EncodeToString(d[:]) }

// Equal reports whether d and o are the same, in time independent of
// where they differ.
func (d Digest) Equal(o Digest) bool { return subtle.ConstantTimeCompare(d[:], o[:]) == 1 }

// Matches hashes token and compares it with d in constant time. An empty
// token never matches.
func (d Digest) Matches(token string) bool {
	h := Hash(token) // always hashed: the time taken says nothing of token
	return token != "" && d.Equal(h)
}

// Bearer returns the token of an Authorization header value of the Bearer
// scheme (the scheme in any case, RFC 6750), or "" for any other value.
func Bearer(authorization string) string {
	scheme, t, ok := strings.Cut(strings.TrimSpace(authorization), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(t)
}

// RequestToken returns the token a request carries: from "Authorization:
// Bearer", else from the query parameter named query (for WebSocket clients
// that cannot set headers, such as browsers); "" when there is none. An
// empty query name reads the header only.
func RequestToken(r *http.Request, query string) string {
	if t := Bearer(r.Header.Get("Authorization")); t != "" {
		return t
	}
	if query == "" {
		return ""
	}
	return r.URL.Query().Get(query)
}
