package daemon

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func secretFlags(t *testing.T) (*flag.FlagSet, *string) {
	t.Helper()
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(new(bytes.Buffer))
	tok := new(string)
	SecretVar(fs, tok, "influx-token", "InfluxDB `credentials`")
	fs.String("other", "", "another flag")
	return fs, tok
}

func TestSecretFromEnvironment(t *testing.T) {
	fs, tok := secretFlags(t)
	t.Setenv("T_INFLUX_TOKEN", "from-env")
	if err := BindEnv(fs, "T"); err != nil {
		t.Fatal(err)
	}
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if err := CheckSecrets(fs); err != nil || *tok != "from-env" {
		t.Fatalf("token %q, err %v", *tok, err)
	}
}

func TestSecretFromFile(t *testing.T) {
	fs, tok := secretFlags(t)
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte("  from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := BindEnv(fs, "T"); err != nil {
		t.Fatal(err)
	}
	if err := fs.Parse([]string{"-influx-token-file", path}); err != nil {
		t.Fatal(err)
	}
	if err := CheckSecrets(fs); err != nil || *tok != "from-file" {
		t.Fatalf("token %q, err %v", *tok, err)
	}
	empty := filepath.Join(t.TempDir(), "empty")
	_ = os.WriteFile(empty, []byte("\n"), 0o600)
	fs2, _ := secretFlags(t)
	if err := fs2.Parse([]string{"-influx-token-file", empty}); err == nil {
		t.Fatal("an empty secret file was taken")
	}
}

// A secret on the command line is refused, with a message that names the
// ways that are taken and does not repeat the secret.
func TestSecretOnCommandLineRefused(t *testing.T) {
	fs, tok := secretFlags(t)
	if err := BindEnv(fs, "T"); err != nil {
		t.Fatal(err)
	}
	const secret = "hunter2-on-the-command-line"
	if err := fs.Parse([]string{"-influx-token", secret}); err != nil {
		t.Fatalf("parse: %v", err) // refused after parsing, so the flag package never prints it
	}
	err := CheckSecrets(fs)
	if err == nil {
		t.Fatal("a secret on the command line was taken")
	}
	for _, want := range []string{"-influx-token", "$T_INFLUX_TOKEN", "-influx-token-file"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	if strings.Contains(err.Error(), secret) || *tok == secret {
		t.Fatalf("the secret leaked: error %q, value %q", err, *tok)
	}
	fs2, _ := secretFlags(t)
	if err := fs2.Parse([]string{"-influx-token=" + secret}); err != nil || CheckSecrets(fs2) == nil {
		t.Fatal("-flag=value form taken")
	}
}

func TestSecretGivenTwiceRefused(t *testing.T) {
	fs, _ := secretFlags(t)
	path := filepath.Join(t.TempDir(), "token")
	_ = os.WriteFile(path, []byte("from-file"), 0o600)
	t.Setenv("T_INFLUX_TOKEN", "from-env")
	if err := BindEnv(fs, "T"); err != nil {
		t.Fatal(err)
	}
	if err := fs.Parse([]string{"-influx-token-file", path}); err != nil {
		t.Fatal(err)
	}
	if err := CheckSecrets(fs); err == nil || !strings.Contains(err.Error(), "give one") {
		t.Fatalf("CheckSecrets = %v, want both sources refused", err)
	}
}

// -h shows how to give a secret and never its value, even one taken from
// the environment.
func TestSecretNeverInUsage(t *testing.T) {
	fs, _ := secretFlags(t)
	const secret = "s3cret-in-env-0123"
	t.Setenv("T_INFLUX_TOKEN", secret)
	if err := BindEnv(fs, "T"); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	fs.SetOutput(&out)
	fs.PrintDefaults()
	if strings.Contains(out.String(), secret) {
		t.Fatalf("usage shows the secret:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "set $T_INFLUX_TOKEN or give -influx-token-file") {
		t.Fatalf("usage does not say how to give the secret:\n%s", out.String())
	}
}
