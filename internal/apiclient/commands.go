package apiclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// The command delivery protocol between a frontend and the control plane
// (docs/commands.md, "Delivery"): the frontend holds a stream open (or
// long-polls) for the commands of the devices it holds, writes them to the
// devices, and posts back what the devices reported, and the commands it
// could not write.

// DispatchedCommand is a command the control plane hands to the frontend
// that holds its device: write it to the device unless it has expired.
type DispatchedCommand struct {
	ID       string            `json:"id"`
	DeviceID string            `json:"device_id"`
	Seq      uint64            `json:"seq"`
	Name     string            `json:"name"`
	Params   map[string]string `json:"params"`
	// ExpiresAt is unix milliseconds: never write the command at or after it.
	ExpiresAt int64 `json:"expires_at"`
}

// Dispatch is the answer of GET /v1/frontends/{id}/commands.
type Dispatch struct {
	Commands []DispatchedCommand `json:"commands"`
}

// Outcomes of a CommandReport. Received, succeeded, failed and the
// progress outcomes (downloading, verifying, installing: wire format 1.2)
// are a device's report (telemetry.CommandStatus); undeliverable is the
// frontend's own: it did not write the command (the device is not
// connected here, or the command expired on the way), so the control
// plane queues it again at once.
const (
	OutcomeReceived      = "received"
	OutcomeSucceeded     = "succeeded"
	OutcomeFailed        = "failed"
	OutcomeUndeliverable = "undeliverable"
	OutcomeDownloading   = "downloading"
	OutcomeVerifying     = "verifying"
	OutcomeInstalling    = "installing"
)

// CommandReport is one report a frontend posts.
type CommandReport struct {
	ID string `json:"id"`
	// DeviceID is the authenticated device that sent the report (or to
	// which the frontend failed to write): a report naming a command of
	// another device is refused.
	DeviceID string `json:"device_id"`
	Outcome  string `json:"outcome"`
	Message  string `json:"message,omitempty"`
	Payload  string `json:"payload,omitempty"`
	// Bytes is what a downloading device received so far.
	Bytes int64 `json:"bytes,omitempty"`
	// At is when the frontend got the report (unix milliseconds).
	At int64 `json:"at"`
}

// CommandReports is the body of POST /v1/frontends/{id}/command-reports.
type CommandReports struct {
	Reports []CommandReport `json:"reports"`
}

// MaxCommandReports is the most reports one request may carry.
const MaxCommandReports = 1000

// CommandStream opens GET /v1/frontends/{frontend}/commands?stream=true:
// the control plane keeps the answer open for wait and writes each batch of
// commands it hands to this frontend as a line of NDJSON, and fn gets each
// batch as it comes. It returns nil when the stream ends (the wait is over:
// open the next). A control plane that does not stream (one older than the
// stream) answers once, as to a long poll: fn gets that answer, and the
// stream ends.
func (c *Client) CommandStream(ctx context.Context, frontend string, wait time.Duration, fn func(Dispatch)) error {
	ctx, cancel := context.WithTimeout(ctx, wait+c.cfg.Timeout)
	defer cancel()
	q := url.Values{"wait": {wait.String()}, "stream": {"true"}}
	path := "/v1/frontends/" + url.PathEscape(frontend) + "/commands?" + q.Encode()
	resp, err := c.do(ctx, http.MethodGet, path, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var d Dispatch
		if err := dec.Decode(&d); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("api command stream %s: %w", path, err)
		}
		fn(d)
	}
}

// ReportCommands posts a batch of command reports (at most
// MaxCommandReports). A nil error means every report is on the control
// plane's disk: the frontend may then tell the devices (report_ack).
func (c *Client) ReportCommands(ctx context.Context, frontend string, reports []CommandReport) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	resp, err := c.do(ctx, http.MethodPost, "/v1/frontends/"+url.PathEscape(frontend)+"/command-reports",
		CommandReports{Reports: reports})
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	return resp.Body.Close()
}

// FirmwareContent GETs /v1/firmware/{id}/content with the device's Range
// and If-Range headers (either may be empty) and returns the answer as it
// is — 200, 206 or 416 — for a frontend to pass on; other statuses are an
// *Error. The caller closes the body. ctx bounds the whole transfer.
func (c *Client) FirmwareContent(ctx context.Context, id, rangeHdr, ifRange string) (*http.Response, error) {
	key, err := c.key()
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/v1/firmware/"+url.PathEscape(id)+"/content", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	if rangeHdr != "" {
		req.Header.Set("Range", rangeHdr)
	}
	if ifRange != "" {
		req.Header.Set("If-Range", ifRange)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	switch resp.StatusCode {
	case http.StatusOK, http.StatusPartialContent, http.StatusRequestedRangeNotSatisfiable:
		return resp, nil
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	return nil, &Error{Status: resp.StatusCode}
}
