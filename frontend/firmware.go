package frontend

import (
	"context"
	"errors"
	"io"
	"net/http"
	"regexp"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"github.com/drover-telemetry/drover/internal/apiclient"
	"github.com/drover-telemetry/drover/internal/auth"
	"github.com/drover-telemetry/drover/telemetry"
)

// Firmware downloads (docs/firmware.md). A device fetches an image from
// the frontend it holds a WebSocket to, GET /v1/firmware/{id}, with the
// same credentials as its WebSocket; the frontend passes the request on to
// the control plane with its follower key (the device's token never leaves
// the frontend) and streams the answer back through one token bucket of
// -firmware-bytes-per-second shared by every download, so that firmware
// never crowds out telemetry acks. Range and If-Range pass through: a
// download cut anywhere resumes from its last byte (206), and never splices
// two images (If-Range is the image's SHA-256).

// firmwareVersion returns the firmware version a device names when it
// connects (telemetry.HeaderFirmware, else the query parameter), "" when
// it names none; a version outside the rule is an error. The frontend
// reports it with the device's presence: the registry shows it, and a
// campaign counts a device that comes back running its target version.
func firmwareVersion(r *http.Request) (string, error) {
	v := r.Header.Get(telemetry.HeaderFirmware)
	if v == "" {
		v = r.URL.Query().Get(telemetry.QueryFirmware)
	}
	if v == "" {
		return "", nil
	}
	return v, telemetry.ValidateFirmwareVersion(v)
}

// FirmwarePath is the prefix of firmware downloads: FirmwarePath + id.
const FirmwarePath = "/v1/firmware/"

var firmwareIDRE = regexp.MustCompile(`^fw_[A-Za-z0-9]{1,40}$`)

// firmwareChunk is the most one write takes from the bucket: the burst.
const firmwareChunk = 16 << 10

// newFirmwareLimiter is the frontend's bucket: bytesPerSecond, with a
// burst of one chunk (or the rate, when lower).
func newFirmwareLimiter(bytesPerSecond int) *rate.Limiter {
	return rate.NewLimiter(rate.Limit(bytesPerSecond), min(firmwareChunk, bytesPerSecond))
}

// serveFirmware authenticates a device as serveIngest does (token or
// client certificate) and streams the image it asks for.
func (f *Frontend) serveFirmware(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		f.refuseHTTP(w, http.StatusMethodNotAllowed, reasonBadUpgrade, "GET only", "")
		return
	}
	now := time.Now()
	src := auth.SourceKey(f.proxies.ClientAddr(r))
	if left, blocked := f.srcLimit.Blocked(src, now); blocked {
		f.refuseRateLimited(w, left, "")
		return
	}
	// The same credentials as the device's connection: its token, or the
	// client certificate its handshake verified (-device-auth cert or
	// cert-or-token), which then names the device.
	id, token := credentials(r)
	certID := certDevice(r)
	if id == "" {
		id = certID
	}
	if certID != "" && id != certID {
		f.authFailed(src, "", now)
		w.Header().Set("WWW-Authenticate", `Bearer realm="drover", error="invalid_token"`)
		f.refuseHTTP(w, http.StatusUnauthorized, reasonCertMismatch, textUnauthorized, id[:min(len(id), telemetry.MaxDeviceIDLen)])
		return
	}
	if id == "" || (token == "" && certID == "") {
		f.authFailed(src, "", now)
		w.Header().Set("WWW-Authenticate", `Bearer realm="drover"`)
		f.refuseHTTP(w, http.StatusUnauthorized, reasonNoCredentials, "device id and token required", id)
		return
	}
	if err := telemetry.ValidateDeviceID(id); err != nil {
		f.authFailed(src, "", now)
		f.refuseHTTP(w, http.StatusBadRequest, reasonBadDeviceID, err.Error(), "")
		return
	}
	if left, blocked := f.devLimit.Blocked(id, now); blocked {
		f.refuseRateLimited(w, left, id)
		return
	}
	if _, err := authenticate(f.store.Current(), id, token, certID, now); err != nil {
		f.refuseAuth(w, src, id, now, err)
		return
	}
	fw := strings.TrimPrefix(r.URL.Path, FirmwarePath)
	if !firmwareIDRE.MatchString(fw) || f.commands == nil {
		http.Error(w, "no such firmware", http.StatusNotFound)
		return
	}
	resp, err := f.commands.client.FirmwareContent(r.Context(), fw, r.Header.Get("Range"), r.Header.Get("If-Range"))
	if err != nil {
		var ae *apiclient.Error
		if errors.As(err, &ae) && ae.Status == http.StatusNotFound {
			http.Error(w, "no such firmware", http.StatusNotFound)
			return
		}
		f.logger.Warn("frontend: firmware not fetched from the control plane", "device", id, "firmware", fw, "err", err)
		w.Header().Set("Retry-After", "10")
		http.Error(w, "firmware unavailable, retry later", http.StatusServiceUnavailable)
		return
	}
	defer resp.Body.Close()
	for _, h := range []string{"Content-Type", "Content-Length", "Content-Range", "Accept-Ranges", "ETag", "Last-Modified", "X-Checksum-Sha256"} {
		if v := resp.Header.Get(h); v != "" {
			w.Header().Set(h, v)
		}
	}
	w.WriteHeader(resp.StatusCode)
	n, err := io.Copy(w, &throttled{ctx: r.Context(), r: resp.Body, lim: f.firmwareLim})
	f.commands.fwBytes.Add(float64(n))
	if err != nil {
		// The device resumes from what it has.
		f.logger.Debug("frontend: firmware download cut", "device", id, "firmware", fw, "bytes", n, "err", err)
	}
}

// throttled reads through a token bucket of bytes.
type throttled struct {
	ctx context.Context
	r   io.Reader
	lim *rate.Limiter
}

func (t *throttled) Read(p []byte) (int, error) {
	if len(p) > t.lim.Burst() {
		p = p[:t.lim.Burst()]
	}
	n, err := t.r.Read(p)
	if n > 0 {
		if werr := t.lim.WaitN(t.ctx, n); werr != nil {
			return n, werr
		}
	}
	return n, err
}
