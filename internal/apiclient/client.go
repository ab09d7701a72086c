package apiclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/drover-telemetry/drover/internal/daemon"
)

// Config is where a follower finds the control plane and how it proves
// who it is.
type Config struct {
	// URL is the API's base URL (https://api.example.com:8090); empty:
	// the follower is off.
	URL string
	// Key is the follower's API key (drv_<key id>_<secret>), from the
	// environment or a file (daemon.SecretVar), never a flag value.
	Key string `json:"-"`
	// KeyFile, when Key is empty, is a file the key is read from at each
	// request, not once: drover all points it at the file its own API
	// writes when it starts. Not a flag (-registry-api-key-file reads the
	// file once, into Key).
	KeyFile string
	// CAFile is a PEM file of the certificate authorities the API's
	// certificate is checked against; empty: the system's.
	CAFile string
	// Timeout bounds a request that is not a long poll or a snapshot.
	Timeout time.Duration
}

// DefaultTimeout bounds an ordinary request to the API.
const DefaultTimeout = 10 * time.Second

// RegisterFlags defines -registry-api, -registry-api-key (from the
// environment only), -registry-api-key-file and -registry-api-ca-file in
// fs, bound to c. what says what the target follows there ("the device
// registry, instead of the -registry file").
func (c *Config) RegisterFlags(fs *flag.FlagSet, what string) {
	fs.StringVar(&c.URL, "registry-api", c.URL,
		"`URL` of the control plane (drover api) to follow "+what+": https://, or http:// on loopback only; needs -registry-api-key")
	daemon.SecretVar(fs, &c.Key, "registry-api-key",
		"API key of a follower operator, for -registry-api")
	fs.StringVar(&c.CAFile, "registry-api-ca-file", c.CAFile,
		"PEM `file` of the certificate authorities that sign the API's certificate (default: the system's)")
}

// Enabled reports whether a URL is configured.
func (c Config) Enabled() bool { return c.URL != "" }

// Validate checks the URL, the key and the CA file.
func (c Config) Validate() error {
	if c.URL == "" {
		return nil
	}
	if err := CheckURL("registry-api", c.URL); err != nil {
		return err
	}
	if c.Key == "" && c.KeyFile == "" {
		return errors.New("registry-api: no key: set the follower's API key in the environment or give -registry-api-key-file")
	}
	if c.CAFile != "" {
		if _, err := loadCAs(c.CAFile); err != nil {
			return fmt.Errorf("registry-api-ca-file: %w", err)
		}
	}
	return nil
}

// CheckURL is the one rule for where an API key may be sent (the
// followers' -registry-api, the alert engine's -api-url): the API's base
// URL, https://, or plain http:// only to a loopback address, where the
// key does not cross a network. flag names the setting in the error.
func CheckURL(flag, raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%s: %w", flag, err)
	}
	if u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return fmt.Errorf("%s: %q: want the API's base URL, scheme://host:port, nothing more (no credentials: the key comes from the environment or a file)", flag, raw)
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !loopback(u.Hostname()) {
			return fmt.Errorf("%s: %q: plain http only to a loopback address (the API key would cross the network in clear); serve the API with -tls-cert and use https://", flag, raw)
		}
	default:
		return fmt.Errorf("%s: %q: want https:// (or http:// on loopback)", flag, raw)
	}
	return nil
}

// CheckCAFile reports whether path is a PEM file with at least one
// certificate, for a flag that names the API's certificate authorities.
func CheckCAFile(path string) error {
	_, err := loadCAs(path)
	return err
}

// Transport returns the HTTP transport a client of the API uses: TLS 1.2
// or newer, the API's certificate checked against the certificate
// authorities in caFile (PEM; empty: the system's), no response header
// timeout (long polls answer late; each request has its own deadline).
func Transport(caFile string) (*http.Transport, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pool, err := loadCAs(caFile)
		if err != nil {
			return nil, err
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	tr.ResponseHeaderTimeout = 0
	tr.MaxIdleConnsPerHost = 4
	return tr, nil
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func loadCAs(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s: no PEM certificate in it", path)
	}
	return pool, nil
}

// Client calls the control plane's follower endpoints. Safe for
// concurrent use.
type Client struct {
	cfg  Config
	base string
	http *http.Client
}

// New checks cfg and returns a client.
func New(cfg Config) (*Client, error) {
	if cfg.URL == "" {
		return nil, errors.New("registry-api: no URL")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	tr, err := Transport(cfg.CAFile)
	if err != nil {
		return nil, fmt.Errorf("registry-api-ca-file: %w", err)
	}
	return &Client{cfg: cfg, base: strings.TrimSuffix(cfg.URL, "/"), http: &http.Client{Transport: tr}}, nil
}

// URL returns the API's base URL.
func (c *Client) URL() string { return c.base }

// Close releases idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// Error is an answer of the API other than success: its status and the
// API's error code and message.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string {
	if e.Code == "" {
		return fmt.Sprintf("api answered %d", e.Status)
	}
	return fmt.Sprintf("api answered %d %s: %s", e.Status, e.Code, e.Message)
}

// ErrResync is the API's 410 resync_required: take a new snapshot.
var ErrResync = errors.New("api: resync required")

// Refused reports whether err is the API refusing the follower's key
// (401, 403): a configuration error that retrying will not fix until an
// operator acts.
func Refused(err error) bool {
	var e *Error
	return errors.As(err, &e) && (e.Status == http.StatusUnauthorized || e.Status == http.StatusForbidden)
}

func (c *Client) key() (string, error) {
	if c.cfg.Key != "" {
		return c.cfg.Key, nil
	}
	b, err := os.ReadFile(c.cfg.KeyFile)
	if err != nil {
		return "", fmt.Errorf("read follower key: %w", err)
	}
	k := strings.TrimSpace(string(b))
	if k == "" {
		return "", fmt.Errorf("follower key file %s is empty", c.cfg.KeyFile)
	}
	return k, nil
}

// do sends a request and returns the response of a 2xx answer; any other
// answer is an *Error (ErrResync for a 410), its body read and closed.
func (c *Client) do(ctx context.Context, method, path string, body any) (*http.Response, error) {
	key, err := c.key()
	if err != nil {
		return nil, err
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return resp, nil
	}
	defer resp.Body.Close()
	e := &Error{Status: resp.StatusCode}
	var shape struct{ Code, Message string }
	if json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&shape) == nil {
		e.Code, e.Message = shape.Code, shape.Message
	}
	if resp.StatusCode == http.StatusGone {
		return nil, fmt.Errorf("%w: %s", ErrResync, e.Message)
	}
	return nil, e
}

// getJSON GETs path within timeout and decodes the answer into out.
func (c *Client) getJSON(ctx context.Context, path string, timeout time.Duration, out any) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := c.do(ctx, http.MethodGet, path, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("api answer to %s: %w", path, err)
	}
	return nil
}

// Snapshot opens GET /v1/feed/snapshot; the caller reads the NDJSON
// stream (gzip is asked for and undone by the transport) and closes it.
// ctx bounds the whole read.
func (c *Client) Snapshot(ctx context.Context) (io.ReadCloser, error) {
	resp, err := c.do(ctx, http.MethodGet, "/v1/feed/snapshot", nil)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// Changes long-polls GET /v1/feed/changes: the changes after since, at
// most limit, waiting up to wait for one. ErrResync when the API no longer
// holds every change after since.
func (c *Client) Changes(ctx context.Context, since int64, wait time.Duration, limit int) (Changes, error) {
	var ch Changes
	q := url.Values{"since": {strconv.FormatInt(since, 10)}, "limit": {strconv.Itoa(limit)}}
	if wait > 0 {
		q.Set("wait", wait.String())
	}
	err := c.getJSON(ctx, "/v1/feed/changes?"+q.Encode(), wait+c.cfg.Timeout, &ch)
	return ch, err
}

// LiveTokens long-polls GET /v1/feed/live-tokens: the live-client tokens
// in force, once any changed after since (or since is 0), waiting up to
// wait for a change.
func (c *Client) LiveTokens(ctx context.Context, since int64, wait time.Duration) (LiveTokens, error) {
	var lt LiveTokens
	q := url.Values{"since": {strconv.FormatInt(since, 10)}}
	if wait > 0 {
		q.Set("wait", wait.String())
	}
	err := c.getJSON(ctx, "/v1/feed/live-tokens?"+q.Encode(), wait+c.cfg.Timeout, &lt)
	return lt, err
}

// Presence posts one batch of presence reports (at most MaxPresenceReports).
func (c *Client) Presence(ctx context.Context, frontend string, reports []PresenceReport) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	resp, err := c.do(ctx, http.MethodPost, "/v1/feed/presence", PresenceBatch{Frontend: frontend, Reports: reports})
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	return resp.Body.Close()
}
