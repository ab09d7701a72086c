package clusterlink

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseKeys(t *testing.T) {
	k1, k2 := newKey(t), newKey(t)
	std, url := EncodeKey(k1), base64.RawURLEncoding.EncodeToString(k2[:])
	keys, err := ParseKeys([]byte("# current first\n\n  " + std + "  \n" + url + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 || keys[0] != k1 || keys[1] != k2 {
		t.Fatalf("parsed %d keys, not [k1 k2] in order", len(keys))
	}
	short := base64.StdEncoding.EncodeToString(k1[:16])
	for name, content := range map[string]string{
		"empty":      "# nothing\n\n",
		"not base64": "this is not a key!\n",
		"16 bytes":   short + "\n",
		"twice":      std + "\n" + std + "\n",
	} {
		_, err := ParseKeys([]byte(content))
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if strings.Contains(err.Error(), std) || strings.Contains(err.Error(), short) {
			t.Errorf("%s: the error shows key material: %v", name, err)
		}
	}
	if s := fmt.Sprintf("%v %+v %#v %s", k1, k1, k1, k1); s != "[cluster key] [cluster key] clusterlink.Key{…} [cluster key]" {
		t.Errorf("a key formats as %q", s)
	}
}

func TestConfigValidate(t *testing.T) {
	for name, c := range map[string]Config{
		"nothing":       {},
		"insecure+file": {Insecure: true, KeyFile: "k"},
		"file+memory":   {KeyFile: "k", Keys: []Key{{}}},
		"too many keys": {Keys: make([]Key, maxKeys+1)},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	for name, c := range map[string]Config{
		"file":     {KeyFile: "k"},
		"memory":   {Keys: []Key{{1}}},
		"insecure": {Insecure: true},
	} {
		if err := c.Validate(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestNewRefusesBadKeyFile: a key file that is missing or does not parse
// stops the component at start, naming the file, never its content.
func TestNewRefusesBadKeyFile(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.key")
	if err := os.WriteFile(bad, []byte("c2hvcnQ=\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{filepath.Join(dir, "missing.key"), bad} {
		_, err := New(Config{KeyFile: path}, RoleRouter, "r", nil, nil)
		if err == nil || !strings.Contains(err.Error(), path) && !strings.Contains(err.Error(), "missing.key") {
			t.Errorf("%s: New = %v", path, err)
		}
	}
}
