package auth

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// The registry and clients files already deployed hold hex SHA-256: the
// format must not change.
func TestHashHexIsTheFilesFormat(t *testing.T) {
	const want = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08" // sha256("test")
	if got := HashHex("test"); got != want {
		t.Fatalf("HashHex(test) = %s, want %s", got, want)
	}
	d, err := ParseDigest("9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08")
	if err != nil || d != Hash("test") {
		t.Fatalf("ParseDigest of upper-case hex = %v, %v", d, err)
	}
	for _, bad := range []string{"", "9f86", want + "00", "zz" + want[2:]} {
		if _, err := ParseDigest(bad); err == nil {
			t.Errorf("ParseDigest(%q): no error", bad)
		}
	}
}

func TestDigestMatches(t *testing.T) {
	d := Hash("s3cret")
	if !d.Matches("s3cret") {
		t.Fatal("the right token does not match")
	}
	for _, tok := range []string{"", "s3cre", "s3cret ", "S3cret"} {
		if d.Matches(tok) {
			t.Errorf("token %q matches", tok)
		}
	}
	if Hash("").Matches("") {
		t.Error("an empty token matches the hash of the empty token")
	}
}

func TestBearer(t *testing.T) {
	for in, want := range map[string]string{
		"Bearer abc":       "abc",
		"bearer abc":       "abc",
		"BEARER  abc  ":    "abc",
		"Basic YWJjOmRlZg": "",
		"Bearer":           "",
		"abc":              "",
		"":                 "",
	} {
		if got := Bearer(in); got != want {
			t.Errorf("Bearer(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRequestTokenHeaderWinsOverQuery(t *testing.T) {
	r := httptest.NewRequest(http.MethodGet, "/v1/live?token=from-query", nil)
	if got := RequestToken(r, "token"); got != "from-query" {
		t.Errorf("query only: %q", got)
	}
	if got := RequestToken(r, ""); got != "" {
		t.Errorf("header only asked, query given: %q", got)
	}
	r.Header.Set("Authorization", "Bearer from-header")
	if got := RequestToken(r, "token"); got != "from-header" {
		t.Errorf("header and query: %q", got)
	}
}
