package frontend

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/internal/sim"
)

// importSim registers the simulated devices of sc in the control plane.
func (cp *controlPlane) importSim(sc sim.Config) {
	var rows []map[string]any
	for _, d := range sim.Devices(sc) {
		rows = append(rows, map[string]any{"id": d.ID, "fleet": d.Fleet, "class": d.Class, "region": d.Region, "token_sha256": d.TokenSHA256})
	}
	cp.call("POST", "/v1/imports/devices?create_missing=true", map[string]any{"devices": rows}, nil)
}

// upload stores a firmware image in the control plane and returns its id.
func (cp *controlPlane) upload(t *testing.T, version string, img []byte) string {
	t.Helper()
	req, _ := http.NewRequest("POST", cp.url+"/v1/firmware?version="+version, bytes.NewReader(img))
	req.Header.Set("Authorization", "Bearer "+cp.adminKey)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 201 {
		t.Fatalf("upload: %d %s", resp.StatusCode, b)
	}
	var fw struct{ ID string }
	_ = json.Unmarshal(b, &fw)
	return fw.ID
}

// TestFirmwareOverDroppingLink: a simulated device on a slow link that
// drops every 30 KB downloads an image through its frontend, resuming
// each time from the byte it reached — it receives exactly the image's
// size in all, never starting again from zero — verifies it and reports
// its new version; an image whose hash is not the one the command names is
// not installed. The device's token never reaches the API; the frontend's
// bandwidth cap paces the bytes.
func TestFirmwareOverDroppingLink(t *testing.T) {
	cp := startControlPlane(t, t.TempDir(), freeLoopback(t))
	sc := sim.DefaultConfig()
	sc.Devices, sc.Rate, sc.TokenSeed = 1, 0, "firmware-test"
	sc.FirmwareLinkBytesPerSecond, sc.FirmwareDropEvery, sc.FirmwareChunk = 400_000, 30_000, 4096
	sc.FirmwareVersion = "4.1.0"
	cp.importSim(sc)
	img := make([]byte, 120_000)
	_, _ = rand.Read(img)
	sum := sha256.Sum256(img)
	fw := cp.upload(t, "4.2.0", img)

	cfg := followConfig(t, cp)
	cfg.FirmwareBytesPerSecond = 300_000
	e := start(t, cfg)
	sc.URLs = []string{e.url}
	fleet, err := sim.New(sc, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fleet.Run(ctx) }()
	defer func() { cancel(); <-done }()
	dev := sim.DeviceID(sc.IDPrefix, 0)
	waitFor(t, 10*time.Second, "the device reported connected, running 4.1.0", func() bool {
		var d struct {
			Presence *struct {
				Connected       bool
				FirmwareVersion string `json:"firmware_version"`
			} `json:"presence"`
		}
		cp.call("GET", "/v1/devices/"+dev, nil, &d)
		return d.Presence != nil && d.Presence.Connected && d.Presence.FirmwareVersion == "4.1.0"
	})
	c, err := cp.post(dev, "?wait=30s", map[string]any{"name": sim.FirmwareCommand, "ttl": "1m",
		"params": map[string]string{"id": fw, "sha256": hex.EncodeToString(sum[:]), "version": "4.2.0"}})
	if err != nil || c.State != "succeeded" || c.Payload != `{"version":"4.2.0"}` {
		t.Fatalf("firmware update: %+v %v", c, err)
	}
	// The device's progress reports (downloading with its bytes, verifying,
	// installing) went through the frontend: the API shows the last stage
	// and the bytes of the last download report, the whole image.
	if p := cp.command(dev, c.ID).Progress; p == nil || p.Stage != "installing" || p.Bytes != int64(len(img)) {
		t.Errorf("progress after the update: %+v, want installing with %d bytes", p, len(img))
	}
	s := fleet.Summary().Commands
	if s.FirmwareInstalled != 1 || s.FirmwareRestarts != 0 || s.FirmwareBytes != uint64(len(img)) || s.FirmwareResumes < 3 {
		t.Errorf("device figures %+v: want 1 installed, %d bytes in all (never from zero), >= 3 resumes", s, len(img))
	}
	// The wrong hash: downloaded, refused, not installed.
	c, err = cp.post(dev, "?wait=30s", map[string]any{"name": sim.FirmwareCommand, "ttl": "1m",
		"params": map[string]string{"id": fw, "sha256": strings.Repeat("0", 64), "version": "6.6.6"}})
	if err != nil || c.State != "failed" || !strings.Contains(c.Message, "not installed") {
		t.Errorf("a corrupted image: %+v %v", c, err)
	}
	// A device without its token gets nothing.
	resp, err := http.Get(strings.TrimSuffix(strings.Replace(e.url, "ws://", "http://", 1), IngestPath) + FirmwarePath + fw)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("firmware without credentials: %d", resp.StatusCode)
	}
}

// TestCampaignOverDroppingLinks: a campaign of 6 simulated devices, 2 at a
// time, on links that drop every 25 KB: every device ends succeeded, none
// stuck, and no download ever started again from zero.
func TestCampaignOverDroppingLinks(t *testing.T) {
	cp := startControlPlane(t, t.TempDir(), freeLoopback(t))
	sc := sim.DefaultConfig()
	sc.Devices, sc.Rate, sc.TokenSeed = 6, 0, "campaign-test"
	sc.FirmwareLinkBytesPerSecond, sc.FirmwareDropEvery = 500_000, 25_000
	cp.importSim(sc)
	var ids []string
	for _, d := range sim.Devices(sc) {
		ids = append(ids, d.ID)
	}
	img := make([]byte, 80_000)
	_, _ = rand.Read(img)
	fw := cp.upload(t, "5.0.1", img)
	e := start(t, followConfig(t, cp))
	sc.URLs = []string{e.url}
	fleet, err := sim.New(sc, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fleet.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitFor(t, 10*time.Second, "every device connected", func() bool { return fleet.Stats().Connected == int64(sc.Devices) })
	var camp struct {
		ID      string
		State   string
		Devices map[string]int
	}
	cp.call("POST", "/v1/firmware-campaigns", map[string]any{"firmware": fw, "devices": ids, "max_concurrent": 2,
		"per_minute": 600, "device_timeout": "1m"}, &camp)
	waitFor(t, 45*time.Second, "the campaign completed", func() bool {
		cp.call("GET", "/v1/firmware-campaigns/"+camp.ID, nil, &camp)
		return camp.State == "completed"
	})
	s := fleet.Summary().Commands
	if camp.Devices["succeeded"] != sc.Devices || s.FirmwareInstalled != uint64(sc.Devices) || s.FirmwareRestarts != 0 ||
		s.FirmwareBytes != uint64(sc.Devices*len(img)) {
		t.Errorf("campaign %+v; devices %+v", camp.Devices, s)
	}
	// Each device's bytes, from its downloading reports: the whole image.
	var page struct {
		Items []struct {
			DeviceID string `json:"device_id"`
			State    string `json:"state"`
			Bytes    int64  `json:"bytes"`
		} `json:"items"`
	}
	cp.call("GET", "/v1/firmware-campaigns/"+camp.ID+"/devices", nil, &page)
	for _, d := range page.Items {
		if d.State != "succeeded" || d.Bytes != int64(len(img)) {
			t.Errorf("campaign device %+v, want succeeded with %d bytes", d, len(img))
		}
	}
	if len(page.Items) != sc.Devices {
		t.Errorf("%d campaign devices listed, want %d", len(page.Items), sc.Devices)
	}
}

// TestFirmwareByDeviceCertificate: a device that authenticates with its
// client certificate (-device-auth cert-or-token) downloads firmware with it
// too, by range, without a token; a certificate naming another device than
// the request, or no credentials at all, are refused as on the ingest path.
func TestFirmwareByDeviceCertificate(t *testing.T) {
	cp := startControlPlane(t, t.TempDir(), freeLoopback(t))
	sc := sim.DefaultConfig()
	sc.Devices, sc.TokenSeed = 2, "firmware-cert-test"
	cp.importSim(sc)
	img := make([]byte, 20_000)
	_, _ = rand.Read(img)
	fw := cp.upload(t, "5.0.0", img)

	tf := newTLSFiles(t, "edge")
	caFile := tf.ca.WriteCA(t, tf.dir, "devices.pem")
	cfg := followConfig(t, cp)
	tf.withTLS(false)(&cfg)
	cfg.TLS.ClientCAFile, cfg.DeviceAuth = caFile, DeviceAuthCertOrToken
	e := start(t, cfg)
	dev0, dev1 := sim.DeviceID(sc.IDPrefix, 0), sim.DeviceID(sc.IDPrefix, 1)
	get := func(cert *tls.Certificate, header string) (*http.Response, []byte) {
		t.Helper()
		tc := &tls.Config{RootCAs: tf.ca.Pool()}
		if cert != nil {
			tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
		}
		client := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}
		defer client.CloseIdleConnections()
		req, _ := http.NewRequest("GET", "https://"+e.f.Addr().String()+FirmwarePath+fw, nil)
		req.Header.Set("Range", "bytes=100-199")
		if header != "" {
			req.Header.Set(HeaderDevice, header)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET firmware: %v", err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	cert0 := tf.ca.Client(t, dev0).TLS(t)
	// start returned once the frontend was ready: its registry, from the
	// control plane, is in force.
	resp, body := get(&cert0, "")
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, img[100:200]) {
		t.Fatalf("by certificate: HTTP %d, %d bytes; want 206 and bytes 100-199 of the image", resp.StatusCode, len(body))
	}
	if resp, _ := get(&cert0, dev1); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("certificate of %s, header naming %s: HTTP %d, want 401", dev0, dev1, resp.StatusCode)
	}
	if resp, _ := get(nil, dev0); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("no certificate, no token: HTTP %d, want 401", resp.StatusCode)
	}
}
