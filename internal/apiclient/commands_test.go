package apiclient_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/internal/apiclient"
)

// TestCommandStreamOlderAPI: a control plane older than the command stream
// ignores stream=true and answers once, as to a long poll (JSON, then the
// end of the answer). The stream takes that answer's commands and ends
// without an error, so that a frontend asks again at once, as it did after
// a long poll. (A fake server: the older api cannot run here; the real
// stream is tested against the api in api.TestCommandStream.) A stream cut
// in the middle of a line is an error, so that the frontend backs off.
func TestCommandStreamOlderAPI(t *testing.T) {
	var asked atomic.Value // the query of the last request
	var body atomic.Value  // what the server answers
	answer := `{"commands":[{"id":"cmd_a","device_id":"truck-1","seq":1,"name":"locate","params":{},"expires_at":9000000000000}]}` + "\n"
	body.Store(answer)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Store(r.URL.RawQuery)
		w.Header().Set("Content-Type", "application/json")
		if r.Header.Get("Authorization") != "Bearer k" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		_, _ = w.Write([]byte(body.Load().(string)))
	}))
	defer srv.Close()
	c, err := apiclient.New(apiclient.Config{URL: srv.URL, Key: "k", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var got []apiclient.Dispatch
	if err := c.CommandStream(context.Background(), "fe-1", 25*time.Second, func(d apiclient.Dispatch) { got = append(got, d) }); err != nil {
		t.Fatalf("stream from an api that answers once: %v", err)
	}
	if q, _ := asked.Load().(string); !strings.Contains(q, "stream=true") || !strings.Contains(q, "wait=25s") {
		t.Errorf("asked %q, want stream=true and wait=25s", q)
	}
	if len(got) != 1 || len(got[0].Commands) != 1 || got[0].Commands[0].ID != "cmd_a" {
		t.Errorf("got %+v, want the one answer's command", got)
	}

	body.Store(answer[:40]) // cut mid-line
	got = nil
	if err := c.CommandStream(context.Background(), "fe-1", time.Second, func(d apiclient.Dispatch) { got = append(got, d) }); err == nil || len(got) != 0 {
		t.Errorf("a stream cut mid-line: err %v, batches %d; want an error and none", err, len(got))
	}
}
