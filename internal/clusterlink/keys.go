package clusterlink

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// KeySize is the length of a cluster key in bytes.
const KeySize = 32

// maxKeys bounds the keys of one file: the current one and those still
// accepted during a rotation. More is a mistake, not a rotation.
const maxKeys = 8

// maxKeyFileBytes bounds what is read of a key file.
const maxKeyFileBytes = 64 << 10

// Key is one cluster key: 32 random bytes. Its String never shows it.
type Key [KeySize]byte

// String hides the key: keys must never reach a log line by accident.
func (Key) String() string { return "[cluster key]" }

// GoString hides the key from %#v too.
func (Key) GoString() string { return "clusterlink.Key{…}" }

// GenerateKey returns a new random key.
func GenerateKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return k, fmt.Errorf("generate cluster key: %w", err)
	}
	return k, nil
}

// EncodeKey returns k as a line of a key file (standard base64).
func EncodeKey(k Key) string { return base64.StdEncoding.EncodeToString(k[:]) }

// ParseKeys reads a key file's content: one base64 key of 32 bytes a line
// (standard or URL alphabet, padded or not); empty lines and lines starting
// with '#' are ignored. The first key is the current one (it signs); every
// key is accepted. Errors name the line, never its content.
func ParseKeys(data []byte) ([]Key, error) {
	var keys []Key
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		b, err := decodeBase64(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: not base64", n)
		}
		if len(b) != KeySize {
			return nil, fmt.Errorf("line %d: a key of %d bytes; want %d (make one with: head -c 32 /dev/urandom | base64)", n, len(b), KeySize)
		}
		var k Key
		copy(k[:], b)
		for i, other := range keys {
			if other == k {
				return nil, fmt.Errorf("line %d: the same key as key %d", n, i+1)
			}
		}
		keys = append(keys, k)
		if len(keys) > maxKeys {
			return nil, fmt.Errorf("more than %d keys; a rotation needs two", maxKeys)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return nil, errors.New("no key (one base64 key of 32 bytes a line; make one with: head -c 32 /dev/urandom | base64)")
	}
	return keys, nil
}

func decodeBase64(s string) ([]byte, error) {
	var firstErr error
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		b, err := enc.DecodeString(s)
		if err == nil {
			return b, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return nil, firstErr
}

// ReadKeyFile reads and parses a key file. It also reports whether the file
// can be read by others than its owner (group or world bits), which
// deserves a warning, not a refusal: a Kubernetes Secret volume is 0644
// unless its defaultMode says otherwise.
func ReadKeyFile(path string) (keys []Key, info os.FileInfo, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("cluster key file: %w", err)
	}
	defer f.Close()
	info, err = f.Stat()
	if err != nil {
		return nil, nil, fmt.Errorf("cluster key file: %w", err)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFileBytes+1))
	if err != nil {
		return nil, nil, fmt.Errorf("cluster key file %s: %w", path, err)
	}
	if len(data) > maxKeyFileBytes {
		return nil, nil, fmt.Errorf("cluster key file %s: larger than %d bytes", path, maxKeyFileBytes)
	}
	keys, err = ParseKeys(data)
	clear(data)
	if err != nil {
		return nil, nil, fmt.Errorf("cluster key file %s: %w", path, err)
	}
	return keys, info, nil
}

// WriteKeyFile writes keys to path (mode 0600), the first being current.
// For tests and tools; an operator makes a key with head -c 32
// /dev/urandom | base64.
func WriteKeyFile(path string, keys ...Key) error {
	var b strings.Builder
	b.WriteString("# drover cluster keys: the first signs, every one is accepted\n")
	for _, k := range keys {
		b.WriteString(EncodeKey(k))
		b.WriteByte('\n')
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("write cluster key file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write cluster key file: %w", err)
	}
	return nil
}
