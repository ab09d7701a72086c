package ctl

import (
	"flag"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"
)

// params collects repeated -param key=value flags.
type params map[string]string

func (p params) String() string { return "" }

func (p params) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return fmt.Errorf("%q: want key=value", v)
	}
	p[k] = val
	return nil
}

func sendFlags(fs *flag.FlagSet) {
	fs.Var(params{}, "param", "a parameter of the command, `key=value` (repeat for several)")
	fs.Duration("ttl", 0, "time to live (`duration`); default the api's -command-default-ttl")
	fs.Duration("wait", 0, "wait up to this long (`duration`) for the outcome")
	fs.String("idempotency-key", "", "a `key` that makes a retried send return the first command instead of a second")
}

// cmdSend sends a command and prints its state (and, once final, the
// device's message and payload). Exit status 1 when the command failed,
// expired or was cancelled.
func cmdSend(c *client, fs *flag.FlagSet, args []string, out io.Writer) error {
	body := map[string]any{"name": args[1], "params": map[string]string(fs.Lookup("param").Value.(params))}
	if d := dur(fs, "ttl"); d > 0 {
		body["ttl"] = d.String()
	}
	path := "/v1/devices/" + url.PathEscape(args[0]) + "/commands"
	if d := dur(fs, "wait"); d > 0 {
		path += "?wait=" + d.String()
	}
	var cmd struct {
		ID, State, Message, Payload string
		Seq                         int64
		ExpiresAt                   time.Time `json:"expires_at"`
	}
	var err error
	if k := str(fs, "idempotency-key"); k != "" {
		err = c.jsonWithHeader("POST", path, map[string]string{"Idempotency-Key": k}, body, &cmd)
	} else {
		err = c.json("POST", path, body, &cmd)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "command %s (seq %d, expires %s): %s\n", cmd.ID, cmd.Seq, cmd.ExpiresAt.Format(time.RFC3339), cmd.State)
	if cmd.Message != "" {
		fmt.Fprintf(out, "message: %s\n", cmd.Message)
	}
	if cmd.Payload != "" {
		fmt.Fprintf(out, "payload: %s\n", cmd.Payload)
	}
	switch cmd.State {
	case "failed", "expired", "cancelled":
		return fmt.Errorf("command %s %s", cmd.ID, cmd.State)
	}
	return nil
}
