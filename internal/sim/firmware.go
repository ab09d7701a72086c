package sim

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/drover-telemetry/drover/telemetry"
)

// FirmwareCommand is the command that makes a simulated device update its firmware: params id
// (the image), sha256 and version. The device downloads the image from the frontend it is
// connected to (GET /v1/firmware/{id}, its own credentials) over a simulated link of
// Config.FirmwareLinkBytesPerSecond that drops every Config.FirmwareDropEvery bytes, resuming
// each time from the last byte it has (Range, If-Range), verifies the SHA-256, "installs" it
// and reports SUCCEEDED with its new version (or FAILED with the reason). On the way it reports
// its progress (wire format 1.2): DOWNLOADING with the bytes it has at every cut of the link
// and at the end of the download, VERIFYING, INSTALLING.
const FirmwareCommand = "firmware_update"

// fwCounters are the fleet's firmware figures (CommandStats).
type fwCounters struct {
	downloads atomic.Uint64 // images downloaded and verified
	failed    atomic.Uint64
	bytes     atomic.Uint64 // bytes received, resumes included
	resumes   atomic.Uint64 // downloads resumed after a drop, from the byte reached
	restarts  atomic.Uint64 // downloads that had to start again from zero
	progress  atomic.Uint64 // progress reports queued (downloading, verifying, installing)
}

// httpBase turns a frontend's WebSocket URL into its HTTP base URL.
func httpBase(wsURL string) string {
	u := strings.Replace(strings.Replace(wsURL, "wss://", "https://", 1), "ws://", "http://", 1)
	if i := strings.Index(u[len("https://"):], "/"); i >= 0 {
		u = u[:len("https://")+i]
	}
	return u
}

// updateFirmware runs in its own goroutine (a download takes minutes on GPRS; the reader must
// go on reading acks) and queues the command's final report.
func (d *device) updateFirmware(ctx context.Context, cmd *telemetry.Command) {
	f := d.f
	rep := &telemetry.CommandReport{Id: cmd.GetId(), Status: telemetry.CommandStatus_COMMAND_STATUS_SUCCEEDED}
	version, err := d.download(ctx, cmd.GetId(), cmd.GetParams())
	if err != nil {
		f.fc.failed.Add(1)
		rep.Status, rep.Message = telemetry.CommandStatus_COMMAND_STATUS_FAILED, err.Error()
		f.cc.failed.Add(1)
	} else {
		f.fc.downloads.Add(1)
		rep.Payload = `{"version":"` + version + `"}`
		d.fwVersion.Store(&version)
		f.cc.succeeded.Add(1)
	}
	f.cc.executed.Add(1)
	d.finish(cmd.GetId(), rep)
}

// download fetches and verifies the image of command id, and returns its version.
func (d *device) download(ctx context.Context, cmdID string, p map[string]string) (string, error) {
	f, cfg := d.f, d.f.cfg
	id, want, version := p["id"], strings.ToLower(p["sha256"]), p["version"]
	if id == "" || len(want) != 64 || version == "" {
		return "", fmt.Errorf("firmware_update needs params id, sha256 and version")
	}
	chunk := cfg.FirmwareChunk
	if chunk <= 0 {
		chunk = 4096
	}
	var img bytes.Buffer
	etag := ""
	client := &http.Client{Timeout: 10 * time.Minute}
	for attempt := 0; ; attempt++ {
		if attempt > 200 {
			return "", fmt.Errorf("download of %s: gave up after %d attempts at byte %d", id, attempt, img.Len())
		}
		base := d.base.Load()
		if base == nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, *base+"/v1/firmware/"+id, nil)
		req.Header.Set("X-Drover-Device", d.id)
		req.Header.Set("Authorization", "Bearer "+d.token)
		if img.Len() > 0 {
			req.Header.Set("Range", "bytes="+strconv.Itoa(img.Len())+"-")
			req.Header.Set("If-Range", etag)
		}
		resp, err := client.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return "", ctx.Err()
			}
			time.Sleep(200 * time.Millisecond)
			continue
		}
		switch {
		case resp.StatusCode == http.StatusPartialContent:
		case resp.StatusCode == http.StatusOK:
			if img.Len() > 0 { // the image changed: start again
				f.fc.restarts.Add(1)
				img.Reset()
			}
		default:
			resp.Body.Close()
			if resp.StatusCode == http.StatusNotFound {
				return "", fmt.Errorf("firmware %s not found", id)
			}
			time.Sleep(500 * time.Millisecond)
			continue
		}
		etag = resp.Header.Get("ETag")
		dropped := d.receive(resp.Body, &img, chunk)
		resp.Body.Close()
		d.reportProgress(cmdID, telemetry.CommandStatus_COMMAND_STATUS_DOWNLOADING, img.Len())
		if !dropped {
			break
		}
		f.fc.resumes.Add(1)
	}
	d.reportProgress(cmdID, telemetry.CommandStatus_COMMAND_STATUS_VERIFYING, 0)
	sum := sha256.Sum256(img.Bytes())
	if got := hex.EncodeToString(sum[:]); got != want {
		return "", fmt.Errorf("sha256 %s, want %s: not installed", got, want)
	}
	d.reportProgress(cmdID, telemetry.CommandStatus_COMMAND_STATUS_INSTALLING, 0)
	return version, nil
}

// reportProgress queues a progress report of command id. Not kept: one lost with a connection is
// not sent again (only final reports must reach the server).
func (d *device) reportProgress(id string, st telemetry.CommandStatus, bytes int) {
	s := &d.cmd
	s.mu.Lock()
	s.out = append(s.out, &telemetry.CommandReport{Id: id, Status: st, Bytes: uint64(bytes)})
	s.mu.Unlock()
	d.f.fc.progress.Add(1)
	d.wakeWriter()
}

// receive reads a response body into img at the simulated link's pace, and drops the
// connection every FirmwareDropEvery bytes. It reports whether the transfer was cut before
// the end (by the simulated drop or the network).
func (d *device) receive(body io.Reader, img *bytes.Buffer, chunk int) (cut bool) {
	cfg := d.f.cfg
	buf := make([]byte, chunk)
	got := 0
	start := time.Now()
	for {
		n, err := body.Read(buf)
		if n > 0 {
			img.Write(buf[:n])
			got += n
			d.f.fc.bytes.Add(uint64(n))
			if bps := cfg.FirmwareLinkBytesPerSecond; bps > 0 {
				due := start.Add(time.Duration(float64(got) / float64(bps) * float64(time.Second)))
				time.Sleep(time.Until(due))
			}
			if cfg.FirmwareDropEvery > 0 && got >= cfg.FirmwareDropEvery {
				return true
			}
		}
		if err == io.EOF {
			return false
		}
		if err != nil {
			return true
		}
	}
}
