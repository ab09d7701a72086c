package daemon

import (
	"flag"
	"io"
	"slices"
	"strings"
	"testing"
)

func newTestFlags() (*flag.FlagSet, *string, *int, *StringList) {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	dir := fs.String("queue-dir", "./data", "queue directory")
	n := fs.Int("max-batch", 64, "readings per batch")
	routers := &StringList{"tcp://127.0.0.1:5555"}
	fs.Var(routers, "routers", "router endpoints")
	return fs, dir, n, routers
}

func TestEnvName(t *testing.T) {
	for _, tc := range []struct{ prefix, name, want string }{
		{"DROVER_FRONTEND", "queue-dir", "DROVER_FRONTEND_QUEUE_DIR"},
		{"DROVER_ALL", "frontend.listen", "DROVER_ALL_FRONTEND_LISTEN"},
		{"drover", "log-level", "DROVER_LOG_LEVEL"},
		{"", "ops-listen", "OPS_LISTEN"},
	} {
		if got := EnvName(tc.prefix, tc.name); got != tc.want {
			t.Errorf("EnvName(%q, %q) = %q, want %q", tc.prefix, tc.name, got, tc.want)
		}
	}
}

func TestBindEnvPrecedence(t *testing.T) {
	for _, tc := range []struct {
		name     string
		env      map[string]string
		args     []string
		wantDir  string
		wantN    int
		wantList []string
	}{
		{
			name:     "defaults",
			wantDir:  "./data",
			wantN:    64,
			wantList: []string{"tcp://127.0.0.1:5555"},
		},
		{
			name:     "env over default",
			env:      map[string]string{"T_QUEUE_DIR": "/var/q", "T_MAX_BATCH": "7", "T_ROUTERS": "tcp://a:1, tcp://b:2"},
			wantDir:  "/var/q",
			wantN:    7,
			wantList: []string{"tcp://a:1", "tcp://b:2"},
		},
		{
			name:     "flag over env",
			env:      map[string]string{"T_QUEUE_DIR": "/var/q", "T_MAX_BATCH": "7", "T_ROUTERS": "tcp://a:1,tcp://b:2"},
			args:     []string{"-queue-dir", "/flag/q", "-max-batch=9", "-routers", "tcp://c:3"},
			wantDir:  "/flag/q",
			wantN:    9,
			wantList: []string{"tcp://c:3"},
		},
		{
			name:     "other prefix ignored",
			env:      map[string]string{"OTHER_QUEUE_DIR": "/nope"},
			wantDir:  "./data",
			wantN:    64,
			wantList: []string{"tcp://127.0.0.1:5555"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			fs, dir, n, routers := newTestFlags()
			if err := BindEnv(fs, "T"); err != nil {
				t.Fatalf("BindEnv: %v", err)
			}
			if err := fs.Parse(tc.args); err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if *dir != tc.wantDir || *n != tc.wantN || !slices.Equal(*routers, tc.wantList) {
				t.Errorf("got dir=%q n=%d routers=%q, want dir=%q n=%d routers=%q",
					*dir, *n, *routers, tc.wantDir, tc.wantN, tc.wantList)
			}
		})
	}
}

func TestBindEnvBadValueNamesVariable(t *testing.T) {
	t.Setenv("T_MAX_BATCH", "lots")
	fs, _, _, _ := newTestFlags()
	err := BindEnv(fs, "T")
	if err == nil {
		t.Fatal("BindEnv accepted T_MAX_BATCH=lots for an int flag")
	}
	if !strings.Contains(err.Error(), "T_MAX_BATCH") || !strings.Contains(err.Error(), "lots") {
		t.Errorf("error %q does not name the variable and its value", err)
	}
}

func TestBindEnvDocumentsVariableInUsage(t *testing.T) {
	fs, _, _, _ := newTestFlags()
	if err := BindEnv(fs, "DROVER_FRONTEND"); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	fs.SetOutput(&out)
	fs.PrintDefaults()
	for _, want := range []string{
		"queue directory [$DROVER_FRONTEND_QUEUE_DIR]",
		"readings per batch [$DROVER_FRONTEND_MAX_BATCH]",
		"router endpoints [$DROVER_FRONTEND_ROUTERS]",
		`(default "./data")`,
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %q:\n%s", want, out.String())
		}
	}
}

func TestStringList(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"tcp://a:5555,tcp://b:5555", []string{"tcp://a:5555", "tcp://b:5555"}},
		{" tcp://a:5555 , ,tcp://b:5555,", []string{"tcp://a:5555", "tcp://b:5555"}},
		{"single", []string{"single"}},
		{"", []string{}},
	} {
		var l StringList
		if err := l.Set(tc.in); err != nil {
			t.Fatalf("Set(%q): %v", tc.in, err)
		}
		if !slices.Equal(l, tc.want) {
			t.Errorf("Set(%q) = %q, want %q", tc.in, l, tc.want)
		}
		if got, want := l.String(), strings.Join(tc.want, ","); got != want {
			t.Errorf("String() after Set(%q) = %q, want %q", tc.in, got, want)
		}
	}
}

func TestStringListSetReplaces(t *testing.T) {
	l := StringList{"default"}
	_ = l.Set("a,b")
	_ = l.Set("c")
	if !slices.Equal(l, []string{"c"}) {
		t.Errorf("after two Sets got %q, want [c]", l)
	}
}
