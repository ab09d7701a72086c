package ctl

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Command flags are read back by name: each run looks up what its flags
// func defined.
func str(fs *flag.FlagSet, name string) string { return fs.Lookup(name).Value.String() }

func on(fs *flag.FlagSet, name string) bool { return fs.Lookup(name).Value.String() == "true" }

func dur(fs *flag.FlagSet, name string) time.Duration {
	d, _ := time.ParseDuration(fs.Lookup(name).Value.String())
	return d
}

// device is the part of the API's device that ctl shows.
type device struct {
	ID, Name, Fleet, Class, Region, State string
	Token                                 string `json:"token"`
	Credential                            struct {
		HasToken           bool       `json:"has_token"`
		PreviousValidUntil *time.Time `json:"previous_valid_until"`
	}
	Presence *struct {
		LastSeenAt time.Time `json:"last_seen_at"`
		Frontend   string    `json:"frontend"`
		Connected  bool      `json:"connected"`
	}
}

func cmdWhoami(c *client, _ *flag.FlagSet, _ []string, out io.Writer) error {
	var me map[string]any
	if err := c.json("GET", "/v1/me", nil, &me); err != nil {
		return err
	}
	fmt.Fprintf(out, "operator %v (%v), key %v, role %v, fleets %v\n", me["operator_name"], me["operator_id"], me["key_id"], me["role"], me["fleets"])
	return nil
}

func addFlags(fs *flag.FlagSet) {
	fs.String("name", "", "display `name`")
	fs.String("fleet", "", "`fleet` id")
	fs.String("class", "", "vehicle `class` id")
	fs.String("region", "", "`region` id")
	fs.Bool("token", false, "issue the device's token and print it (the only time it is shown)")
	fs.Bool("suspended", false, "register it suspended (refused until resumed)")
}

func cmdAdd(c *client, fs *flag.FlagSet, args []string, out io.Writer) error {
	in := map[string]any{"id": args[0], "name": str(fs, "name"), "fleet": str(fs, "fleet"), "class": str(fs, "class"),
		"region": str(fs, "region"), "issue_token": on(fs, "token")}
	if on(fs, "suspended") {
		in["state"] = "suspended"
	}
	var d device
	if err := c.json("POST", "/v1/devices", in, &d); err != nil {
		return err
	}
	fmt.Fprintf(out, "added %s (fleet %q, %s)\n", d.ID, d.Fleet, d.State)
	if d.Token != "" {
		fmt.Fprintf(out, "token: %s\n(shown once: give it to the device now)\n", d.Token)
	}
	return nil
}

func importFlags(fs *flag.FlagSet) {
	fs.Bool("upsert", false, "update devices that exist (default: an existing id refuses the import)")
	fs.Bool("issue-tokens", false, "issue a token to every row without token_sha256; they are printed as CSV id,token")
	fs.Bool("create-missing", false, "create unknown fleets, classes and regions (admins of every fleet)")
}

func cmdImport(c *client, fs *flag.FlagSet, args []string, out io.Writer) error {
	var data []byte
	var err error
	if args[0] == "-" {
		data, err = io.ReadAll(os.Stdin)
	} else {
		data, err = os.ReadFile(args[0])
	}
	if err != nil {
		return err
	}
	ct := "application/json"
	if t := bytes.TrimSpace(data); len(t) == 0 || t[0] != '{' {
		ct = "text/csv"
	}
	q := url.Values{}
	if on(fs, "upsert") {
		q.Set("mode", "upsert")
	}
	if on(fs, "issue-tokens") {
		q.Set("issue_tokens", "true")
	}
	if on(fs, "create-missing") {
		q.Set("create_missing", "true")
	}
	var res struct {
		Created, Updated int
		Version          int64
		Tokens           []struct{ ID, Token string }
	}
	if err := c.do("POST", "/v1/imports/devices?"+q.Encode(), ct, bytes.NewReader(data), &res); err != nil {
		return err
	}
	if len(res.Tokens) > 0 {
		fmt.Fprintln(out, "id,token")
		for _, t := range res.Tokens {
			fmt.Fprintf(out, "%s,%s\n", t.ID, t.Token)
		}
	}
	fmt.Fprintf(info, "imported: %d created, %d updated (version %d)\n", res.Created, res.Updated, res.Version)
	return nil
}

func exportFlags(fs *flag.FlagSet) {
	fs.String("o", "", "write to this `file` (atomically) instead of standard output")
}

func cmdExport(c *client, fs *flag.FlagSet, _ []string, out io.Writer) error {
	var buf bytes.Buffer
	if err := c.do("GET", "/v1/exports/registry", "", nil, &buf); err != nil {
		return err
	}
	var check struct{ Devices []json.RawMessage }
	if err := json.Unmarshal(buf.Bytes(), &check); err != nil {
		return fmt.Errorf("the export is cut or not a registry file: %w", err)
	}
	path := str(fs, "o")
	if path == "" {
		_, err := out.Write(buf.Bytes())
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, buf.Bytes(), 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	fmt.Fprintf(info, "exported %d devices to %s\n", len(check.Devices), path)
	return nil
}

func listFlags(fs *flag.FlagSet) {
	fs.String("fleet", "", "only this `fleet`")
	fs.String("class", "", "only this `class`")
	fs.String("region", "", "only this `region`")
	fs.String("state", "", "only this `state`: active, suspended, decommissioned")
	fs.String("q", "", "`text` in the id or the name")
	fs.Bool("json", false, "one JSON object per device instead of a table")
}

func cmdList(c *client, fs *flag.FlagSet, _ []string, out io.Writer) error {
	q := url.Values{"limit": {"1000"}}
	for _, f := range []string{"fleet", "class", "region", "state", "q"} {
		if v := str(fs, f); v != "" {
			q.Set(f, v)
		}
	}
	asJSON := on(fs, "json")
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	if !asJSON {
		fmt.Fprintln(tw, "ID\tNAME\tFLEET\tCLASS\tREGION\tSTATE\tTOKEN\tLAST SEEN")
	}
	for {
		var page struct {
			Items      []json.RawMessage `json:"items"`
			NextCursor string            `json:"next_cursor"`
		}
		if err := c.json("GET", "/v1/devices?"+q.Encode(), nil, &page); err != nil {
			return err
		}
		for _, raw := range page.Items {
			if asJSON {
				fmt.Fprintf(out, "%s\n", raw)
				continue
			}
			var d device
			if err := json.Unmarshal(raw, &d); err != nil {
				return err
			}
			tok := "none"
			if d.Credential.HasToken {
				tok = "yes"
				if d.Credential.PreviousValidUntil != nil {
					tok = "rotating"
				}
			}
			seen := "-"
			if d.Presence != nil {
				seen = d.Presence.LastSeenAt.Format(time.RFC3339) + " via " + d.Presence.Frontend
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.ID, d.Name, d.Fleet, d.Class, d.Region, d.State, tok, seen)
		}
		if page.NextCursor == "" {
			break
		}
		q.Set("cursor", page.NextCursor)
	}
	return tw.Flush()
}

func reasonFlags(fs *flag.FlagSet) {
	fs.String("reason", "", "why (kept with the state change and in the audit log)")
}

func stateCmd(state string) func(*client, *flag.FlagSet, []string, io.Writer) error {
	return func(c *client, fs *flag.FlagSet, args []string, out io.Writer) error {
		var d device
		if err := c.json("POST", "/v1/devices/"+url.PathEscape(args[0])+"/state",
			map[string]string{"state": state, "reason": str(fs, "reason")}, &d); err != nil {
			return err
		}
		fmt.Fprintf(out, "%s is %s\n", d.ID, d.State)
		return nil
	}
}

func rotateFlags(fs *flag.FlagSet) {
	fs.Duration("overlap", time.Hour, "how long (`duration`) the current token keeps working; 0 ends it now")
}

func cmdRotate(c *client, fs *flag.FlagSet, args []string, out io.Writer) error {
	var d device
	in := map[string]int64{"overlap_seconds": int64(dur(fs, "overlap") / time.Second)}
	if err := c.json("POST", "/v1/devices/"+url.PathEscape(args[0])+"/token/rotate", in, &d); err != nil {
		var ae *apiError
		if errors.As(err, &ae) && ae.Status == 409 {
			// No token yet: issue the first one.
			if err2 := c.json("POST", "/v1/devices/"+url.PathEscape(args[0])+"/token", nil, &d); err2 != nil {
				return err
			}
		} else {
			return err
		}
	}
	fmt.Fprintf(out, "token: %s\n", d.Token)
	if d.Credential.PreviousValidUntil != nil {
		fmt.Fprintf(out, "(shown once; the previous token works until %s)\n", d.Credential.PreviousValidUntil.Format(time.RFC3339))
	} else {
		fmt.Fprintln(out, "(shown once)")
	}
	return nil
}

func liveFlags(fs *flag.FlagSet) {
	fs.String("name", "", "`name` of the client (logs, metrics); required")
	fs.String("fleets", "", "comma-separated `fleets` it may see (* for every fleet); required")
	fs.String("devices", "", "comma-separated device `ids` to narrow it to")
	fs.String("area", "", "map `rectangle` min_lat,min_lon,max_lat,max_lon to narrow it to")
	fs.Duration("ttl", 30*24*time.Hour, "how long (`duration`) the token lives")
}

func cmdLiveToken(c *client, fs *flag.FlagSet, _ []string, out io.Writer) error {
	split := func(s string) []string {
		var l []string
		for p := range strings.SplitSeq(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				l = append(l, p)
			}
		}
		return l
	}
	in := map[string]any{"name": str(fs, "name"), "fleets": split(str(fs, "fleets")), "expires_in_seconds": int64(dur(fs, "ttl") / time.Second)}
	if d := split(str(fs, "devices")); len(d) > 0 {
		in["devices"] = d
	}
	if a := split(str(fs, "area")); len(a) > 0 {
		if len(a) != 4 {
			return fmt.Errorf("area: want min_lat,min_lon,max_lat,max_lon")
		}
		var v [4]float64
		for i, s := range a {
			f, err := strconv.ParseFloat(s, 64)
			if err != nil {
				return fmt.Errorf("area: %q: %w", s, err)
			}
			v[i] = f
		}
		in["area"] = map[string]float64{"min_lat": v[0], "min_lon": v[1], "max_lat": v[2], "max_lon": v[3]}
	}
	var lt struct {
		ID, Token string
		ExpiresAt time.Time `json:"expires_at"`
	}
	if err := c.json("POST", "/v1/live-tokens", in, &lt); err != nil {
		return err
	}
	fmt.Fprintf(out, "live token %s (expires %s):\n%s\n(shown once: the livefeed takes it as Authorization: Bearer, or ?token= from a browser)\n",
		lt.ID, lt.ExpiresAt.Format(time.RFC3339), lt.Token)
	return nil
}
