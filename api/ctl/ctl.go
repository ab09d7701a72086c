package ctl

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/drover-telemetry/drover/internal/daemon"
)

// KeyEnv is the environment variable holding the API key.
const KeyEnv = "DROVER_API_KEY"

// info receives what a command says besides its output (summaries), so
// that its output can be piped: Main sets it to its stderr.
var info io.Writer = os.Stderr

// client talks to the API.
type client struct {
	base string
	key  string
	http *http.Client
	hdr  map[string]string // extra request headers (jsonWithHeader)
}

// apiError is the API's error shape.
type apiError struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
	Details any    `json:"details"`
}

func (e *apiError) Error() string {
	s := fmt.Sprintf("%s (%d %s)", e.Message, e.Status, e.Code)
	if e.Details != nil && e.Code == "import_refused" {
		b, _ := json.MarshalIndent(e.Details, "", "  ")
		s += "\n" + string(b)
	}
	return s
}

// do sends a request and decodes a JSON answer into out (unless nil); a
// non-2xx answer is an *apiError.
func (c *client) do(method, path, contentType string, body io.Reader, out any) error {
	req, err := http.NewRequest(method, c.base+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.key)
	for k, v := range c.hdr {
		req.Header.Set(k, v)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		e := &apiError{Status: resp.StatusCode}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(b, e) != nil || e.Code == "" {
			e.Code, e.Message = "http", strings.TrimSpace(string(b))
		}
		return e
	}
	if w, ok := out.(io.Writer); ok {
		_, err := io.Copy(w, resp.Body)
		return err
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	return nil
}

// jsonWithHeader is json with extra request headers.
func (c *client) jsonWithHeader(method, path string, hdr map[string]string, in, out any) error {
	cc := *c
	cc.hdr = hdr
	return cc.json(method, path, in, out)
}

func (c *client) json(method, path string, in, out any) error {
	var body io.Reader
	ct := ""
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body, ct = bytes.NewReader(b), "application/json"
	}
	return c.do(method, path, ct, body, out)
}

// command is one subcommand.
type command struct {
	name, args, summary string
	run                 func(c *client, fs *flag.FlagSet, args []string, stdout io.Writer) error
	flags               func(fs *flag.FlagSet)
}

var commands []command

func init() {
	commands = []command{
		{name: "whoami", summary: "who the key is: operator, role, fleets", run: cmdWhoami},
		{name: "add", args: "ID", summary: "register a device (-token issues its token and prints it once)", flags: addFlags, run: cmdAdd},
		{name: "import", args: "FILE", summary: "import devices from a registry JSON file, a JSON {\"devices\": [...]} or a CSV (- for stdin); all or nothing", flags: importFlags, run: cmdImport},
		{name: "export", summary: "write the registry file (active devices with a token) to -o or stdout", flags: exportFlags, run: cmdExport},
		{name: "list", summary: "list devices (every page), filtered", flags: listFlags, run: cmdList},
		{name: "suspend", args: "ID", summary: "suspend a device: it is refused until resumed", flags: reasonFlags, run: stateCmd("suspended")},
		{name: "resume", args: "ID", summary: "make a suspended device active again", flags: reasonFlags, run: stateCmd("active")},
		{name: "decommission", args: "ID", summary: "decommission a device (final; its data stays)", flags: reasonFlags, run: stateCmd("decommissioned")},
		{name: "rotate", args: "ID", summary: "rotate a device's token (the old one works for -overlap); prints the new token once", flags: rotateFlags, run: cmdRotate},
		{name: "send", args: "ID NAME", summary: "send a device a command (-param k=v, -ttl, -wait for its outcome); exit 1 if it failed, expired or was cancelled", flags: sendFlags, run: cmdSend},
		{name: "live-token", summary: "issue a live-client token for fleets (and devices, an area); prints it once", flags: liveFlags, run: cmdLiveToken},
	}
}

// Main runs `drover ctl args...` and returns the exit status: 0 done, 1 the
// API refused or failed, 2 usage.
func Main(args []string, stdout, stderr io.Writer) int {
	info = stderr
	fs := flag.NewFlagSet("drover ctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	api := "http://127.0.0.1:8090"
	keyFile := ""
	caFile := ""
	timeout := 5 * time.Minute
	fs.StringVar(&api, "api", api, "`URL` of drover api")
	fs.StringVar(&keyFile, "key-file", keyFile, "`file` holding the API key (default: $"+KeyEnv+")")
	fs.StringVar(&caFile, "ca-file", caFile, "PEM `file` of the CA that signed the API's certificate (https with a private CA)")
	fs.DurationVar(&timeout, "timeout", timeout, "longest `duration` of one API call")
	fs.Usage = func() {} // printed below, to stdout for -h
	if err := daemon.BindEnv(fs, "DROVER_CTL"); err != nil {
		fmt.Fprintf(stderr, "drover ctl: %v\n", err)
		return 2
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			usage(fs)
			return 0
		}
		usage(fs)
		return 2
	}
	if fs.NArg() == 0 {
		usage(fs)
		return 2
	}
	name, rest := fs.Arg(0), fs.Args()[1:]
	var cmd *command
	for i := range commands {
		if commands[i].name == name {
			cmd = &commands[i]
		}
	}
	if cmd == nil {
		fmt.Fprintf(stderr, "drover ctl: unknown command %q\n", name)
		usage(fs)
		return 2
	}
	sub := flag.NewFlagSet("drover ctl "+name, flag.ContinueOnError)
	sub.SetOutput(stderr)
	if cmd.flags != nil {
		cmd.flags(sub)
	}
	sub.Usage = func() {}
	subUsage := func(w io.Writer) {
		sub.SetOutput(w)
		fmt.Fprintf(w, "Usage: drover ctl %s [flags] %s\n\n%s.\n\nFlags:\n", name, cmd.args, upperFirst(cmd.summary))
		sub.PrintDefaults()
	}
	if err := sub.Parse(interleave(sub, rest)); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			subUsage(stdout)
			return 0
		}
		subUsage(stderr)
		return 2
	}
	if want := len(strings.Fields(cmd.args)); sub.NArg() != want {
		fmt.Fprintf(stderr, "drover ctl %s: want %d argument(s) (%s), got %q\n", name, want, cmd.args, sub.Args())
		return 2
	}
	key, err := loadKey(keyFile)
	if err != nil {
		fmt.Fprintf(stderr, "drover ctl: %v\n", err)
		return 2
	}
	hc := &http.Client{Timeout: timeout}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			fmt.Fprintf(stderr, "drover ctl: ca-file: %v\n", err)
			return 2
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			fmt.Fprintf(stderr, "drover ctl: ca-file %s: no certificate\n", caFile)
			return 2
		}
		hc.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	}
	c := &client{base: strings.TrimRight(api, "/"), key: key, http: hc}
	if err := cmd.run(c, sub, sub.Args(), stdout); err != nil {
		fmt.Fprintf(stderr, "drover ctl %s: %v\n", name, err)
		return 1
	}
	return 0
}

// interleave lets flags follow the positional argument (drover ctl add
// truck-1 -fleet acme) by moving the positionals to the end.
func interleave(fs *flag.FlagSet, args []string) []string {
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if strings.HasPrefix(a, "-") && a != "-" {
			flags = append(flags, a)
			name := strings.TrimLeft(a, "-")
			if !strings.Contains(name, "=") {
				if f := fs.Lookup(name); f != nil {
					if bf, ok := f.Value.(interface{ IsBoolFlag() bool }); !ok || !bf.IsBoolFlag() {
						if i+1 < len(args) {
							flags = append(flags, args[i+1])
							i++
						}
					}
				}
			}
			continue
		}
		pos = append(pos, a)
	}
	return append(flags, pos...)
}

func loadKey(keyFile string) (string, error) {
	if keyFile != "" {
		b, err := os.ReadFile(keyFile)
		if err != nil {
			return "", fmt.Errorf("key-file: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	if k := strings.TrimSpace(os.Getenv(KeyEnv)); k != "" {
		return k, nil
	}
	return "", fmt.Errorf("no API key: set $%s or give -key-file (drover api writes its first admin key to DATA/api/api-admin-key)", KeyEnv)
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

func usage(fs *flag.FlagSet) {
	w := fs.Output()
	fmt.Fprint(w, `Usage: drover ctl [flags] <command> [command flags] [args]

Operator tasks against drover api (its REST API, never its database). The key
comes from $`+KeyEnv+` or -key-file, never from the command line.

Commands:
`)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, c := range commands {
		fmt.Fprintf(tw, "  %s %s\t%s\n", c.name, c.args, c.summary)
	}
	_ = tw.Flush()
	fmt.Fprint(w, "\nFlags (each also read from $DROVER_CTL_<FLAG>):\n")
	fs.PrintDefaults()
	fmt.Fprint(w, "\nRun 'drover ctl <command> -h' for a command's flags.\n")
}
