package alerts

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/drover-telemetry/drover/alerts/eval"
)

// EventsRequest is what the engine POSTs to the API's /v1/alerts/events:
// alert events in the order the engine found them. The API keeps one row
// per alert (its latest state; acknowledgement and manual clearing are the
// API's), and takes the same event twice harmlessly.
type EventsRequest struct {
	Events []eval.Event `json:"events"`
}

// apiOutput reports events to the control plane, which keeps the alarm
// list operators work with (docs/api.md, "Alerts").
func (e *Engine) apiOutput() *output {
	client := &http.Client{Timeout: e.cfg.WebhookTimeout, Transport: e.apiTr}
	u := strings.TrimRight(e.cfg.APIURL, "/") + "/v1/alerts/events"
	return &output{name: "api", durable: true, maxEvents: 500, deliver: func(ctx context.Context, events []eval.Event) error {
		body, err := json.Marshal(EventsRequest{Events: events})
		if err != nil {
			return err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
		if err != nil {
			return err
		}
		key, err := e.apiKey()
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode/100 == 2 {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			return nil
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("POST /v1/alerts/events: %s: %s", resp.Status, bytes.TrimSpace(b))
	}}
}
