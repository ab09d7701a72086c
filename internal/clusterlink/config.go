package clusterlink

import (
	"errors"
	"flag"
	"fmt"
)

// Role is what a drover process is to its peers; its certificate names it.
type Role string

// The roles of drover's tiers.
const (
	RoleFrontend      Role = "frontend"
	RoleRouter        Role = "router"
	RoleStorageWriter Role = "storage-writer"
	RoleLivefeed      Role = "livefeed"
	// RoleAlerts is the alert engine as the server of its alert lane. On
	// the store lane it is a durable subscriber like a storage writer, and
	// connects with that role.
	RoleAlerts Role = "alerts"
)

func (r Role) dnsName() string { return string(r) + dnsSuffix }

func (r Role) valid() bool {
	switch r {
	case RoleFrontend, RoleRouter, RoleStorageWriter, RoleLivefeed, RoleAlerts:
		return true
	}
	return false
}

// Link is one kind of connection between tiers: the role that binds (the
// server of TLS), the role that connects (its client), and a name for
// metrics and logs. Each side checks the other's role.
type Link struct {
	Name   string
	Server Role
	Client Role
}

// The links between drover's tiers.
var (
	// LinkIngest: frontends' drainers (DEALER) to a router's -listen (ROUTER).
	LinkIngest = Link{Name: "ingest", Server: RoleRouter, Client: RoleFrontend}
	// LinkStore: storage writers (DEALER) to a router's -store-listen (ROUTER).
	LinkStore = Link{Name: "store", Server: RoleRouter, Client: RoleStorageWriter}
	// LinkLive: livefeeds (SUB) to a router's -live-pub (the live publisher).
	LinkLive = Link{Name: "live", Server: RoleRouter, Client: RoleLivefeed}
	// LinkAlerts: livefeeds (SUB) to an alert engine's -alert-pub (its
	// alert lane).
	LinkAlerts = Link{Name: "alerts", Server: RoleAlerts, Client: RoleLivefeed}
)

// Config says how a process secures its links. Exactly one of KeyFile,
// Keys or Insecure must be set.
type Config struct {
	// KeyFile is the cluster key file (flag -cluster-key-file): base64
	// keys of 32 bytes, one a line; the first signs this process's
	// certificate, every one is trusted. It is read again when it changes
	// (checked at most every few seconds, when a connection is made), so a
	// key rotates without a restart.
	KeyFile string
	// Keys, when set, are used instead of a file: drover all makes one
	// random key at start, so that its loopback links are authenticated
	// too. Not a flag.
	Keys []Key `json:"-"`
	// Insecure (flag -insecure-links) runs every link as plain ZMTP with
	// the NULL mechanism: no authentication, no encryption. For a
	// development machine and for libzmq peers (pyzmq) only; it is
	// announced with a warning at start.
	Insecure bool
}

// RegisterFlags defines -cluster-key-file and -insecure-links in fs, bound
// to c.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.KeyFile, "cluster-key-file", c.KeyFile,
		"`file` of cluster keys: base64 keys of 32 bytes, one a line (the first signs, all are trusted; make one with: head -c 32 /dev/urandom | base64). Every link between drover processes is mutual TLS 1.3 under these keys; re-read when it changes. Required unless -insecure-links")
	fs.BoolVar(&c.Insecure, "insecure-links", c.Insecure,
		"DEVELOPMENT ONLY: plain ZeroMQ (ZMTP NULL) between drover processes: no authentication, no encryption; anyone who reaches a port can inject readings, read the live stream and impersonate a storage writer")
}

// Validate reports a missing or contradictory choice.
func (c Config) Validate() error {
	hasKey := c.KeyFile != "" || len(c.Keys) > 0
	switch {
	case c.Insecure && hasKey:
		return errors.New("insecure-links: given with cluster-key-file; give one, not both")
	case !c.Insecure && !hasKey:
		return errors.New("cluster-key-file: required: every link between drover processes is authenticated with the cluster key " +
			"(make one with: head -c 32 /dev/urandom | base64 > cluster.key, and give every process the same file); " +
			"on a development machine, -insecure-links runs them unauthenticated")
	case c.KeyFile != "" && len(c.Keys) > 0:
		return errors.New("cluster keys given both as a file and in memory")
	case len(c.Keys) > maxKeys:
		return fmt.Errorf("%d cluster keys: at most %d", len(c.Keys), maxKeys)
	}
	return nil
}
