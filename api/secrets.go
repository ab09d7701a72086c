package api

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/base64"
	"encoding/hex"
	"strings"
)

// Secrets: device tokens, live-client tokens and API key secrets are 32
// random bytes (256 bits) from crypto/rand, shown once, stored only as the
// hex SHA-256 of the token string — the registry file's and the clients
// file's token_sha256, so followers and files stay compatible — and
// compared in constant time. A fast hash is right here: the secrets are
// random and long, so there is nothing for a slow hash to protect
// against that 256 bits do not already.

// newSecret returns a fresh random secret, URL-safe.
func newSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return base64.RawURLEncoding.EncodeToString(b)
}

// idEncoding is lower-case base32 without padding: ids that survive URLs,
// shells and case-insensitive eyes.
var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// newID returns a random identifier with a prefix naming its kind (op_,
// key_, lt_): 80 random bits, unique without coordination between
// replicas.
func newID(prefix string) string {
	b := make([]byte, 10)
	_, _ = rand.Read(b)
	return prefix + idEncoding.EncodeToString(b)
}

// hashSecret returns the hex SHA-256 of a secret, as stored.
func hashSecret(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

// secretMatches compares a presented secret with a stored hash in constant
// time.
func secretMatches(secret, storedHex string) bool {
	h := sha256.Sum256([]byte(secret))
	want, err := hex.DecodeString(storedHex)
	if err != nil || len(want) != len(h) {
		return false
	}
	return subtle.ConstantTimeCompare(h[:], want) == 1
}

// apiKeyPrefix starts every API key: "drv_<key id>_<secret>". The key id
// (key_...) is the database's primary key, so authentication is one
// lookup; it is not secret and appears in logs and the audit log.
const apiKeyPrefix = "drv_"

// formatAPIKey builds the key a caller presents.
func formatAPIKey(keyID, secret string) string { return apiKeyPrefix + keyID + "_" + secret }

// parseAPIKey splits a presented key into its id and secret.
func parseAPIKey(key string) (keyID, secret string, ok bool) {
	rest, ok := strings.CutPrefix(key, apiKeyPrefix)
	if !ok {
		return "", "", false
	}
	// key ids are "key_" + base32: the secret starts after the second "_".
	i := strings.Index(rest, "_")
	if i < 0 {
		return "", "", false
	}
	j := strings.Index(rest[i+1:], "_")
	if j < 0 {
		return "", "", false
	}
	keyID, secret = rest[:i+1+j], rest[i+1+j+1:]
	if len(keyID) > 64 || len(secret) < 16 || len(secret) > 128 {
		return "", "", false
	}
	return keyID, secret, true
}
