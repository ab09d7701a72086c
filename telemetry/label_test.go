package telemetry

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateLabel(t *testing.T) {
	for _, s := range []string{"", "acme", "Acme Haulage (Pty) Ltd, depot=JHB", "Île-de-France", "東京",
		"a/b", `"quoted"`, strings.Repeat("x", MaxLabelLen)} {
		if err := ValidateLabel(s); err != nil {
			t.Errorf("ValidateLabel(%q) = %v, want nil", s, err)
		}
	}
	// Each of these would be changed by an InfluxDB tag (a trailing or any backslash, a line
	// break, a control character), is not text, or is too long.
	for s, want := range map[string]string{
		`acme\`:                            "backslash",
		`a\b`:                              "backslash",
		"a\nb":                             "control character",
		"a\tb":                             "control character",
		"a\x7f":                            "control character",
		"a\u0085":                          "control character",
		"a\xffb":                           "not valid UTF-8",
		strings.Repeat("x", MaxLabelLen+1): "129 bytes, at most 128",
	} {
		err := ValidateLabel(s)
		if err == nil || !errors.Is(err, ErrLabel) || !strings.Contains(err.Error(), want) {
			t.Errorf("ValidateLabel(%q) = %v, want an ErrLabel saying %q", s, err, want)
		}
	}
}
