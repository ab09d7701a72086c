package api

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
)

func firmwareFiles(t *testing.T, e *env) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(e.cfg.DataDir, "firmware"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, en := range entries {
		names = append(names, en.Name())
	}
	return names
}

// TestFirmwareArtifacts: an upload is streamed to disk with its SHA-256;
// a body whose hash is not the one given, or over the limit, leaves
// nothing; the content is served whole or by range, so that a transfer
// resumes from its last byte; delete removes record and file.
func TestFirmwareArtifacts(t *testing.T) {
	e := startEnv(t, backends[0], func(c *Config) { c.FirmwareMaxBytes = 512 << 10 })
	e.must(201, req{method: "POST", path: "/v1/classes", key: e.adminKey, body: map[string]string{"id": "van"}}, nil)
	img := make([]byte, 300<<10)
	_, _ = rand.Read(img)
	sum := sha256.Sum256(img)
	hexSum := hex.EncodeToString(sum[:])
	upload := func(query string, body []byte) resp {
		return e.do(req{method: "POST", path: "/v1/firmware?" + query, key: e.adminKey, body: body, contentType: "application/octet-stream"})
	}
	var fw Firmware
	r := upload("version=2.1.0&classes=van&sha256="+hexSum, img)
	if r.status != 201 {
		t.Fatalf("upload: %d %s", r.status, r.body)
	}
	r.json(t, &fw)
	if fw.Size != int64(len(img)) || fw.SHA256 != hexSum || fw.Version != "2.1.0" || len(fw.Classes) != 1 {
		t.Fatalf("uploaded %+v", fw)
	}
	// Refused uploads leave nothing behind.
	bad := append(bytes.Clone(img[:1000]), 1)
	if r := upload("version=2.1.1&sha256="+hexSum, bad); r.status != 422 || r.errCode() != "invalid" {
		t.Errorf("wrong sha256: %d %s", r.status, r.body)
	}
	if r := upload("version=9", make([]byte, 513<<10)); r.status != 413 {
		t.Errorf("over the limit: %d %s", r.status, r.body)
	}
	if r := upload("version=9&classes=tank", img[:10]); r.status != 422 {
		t.Errorf("unknown class: %d %s", r.status, r.body)
	}
	if files := firmwareFiles(t, e); len(files) != 1 || files[0] != fw.ID {
		t.Errorf("files in the store: %v, want only %s", files, fw.ID)
	}
	// Whole, then resumed from a byte, then a range.
	content := "/v1/firmware/" + fw.ID + "/content"
	whole := e.must(200, req{method: "GET", path: content, key: e.adminKey}, nil)
	if !bytes.Equal(whole.body, img) || whole.header.Get("X-Checksum-Sha256") != hexSum {
		t.Fatalf("content: %d bytes, checksum %q", len(whole.body), whole.header.Get("X-Checksum-Sha256"))
	}
	etag := whole.header.Get("ETag")
	rest := e.must(206, req{method: "GET", path: content, key: e.adminKey,
		header: map[string]string{"Range": "bytes=200000-", "If-Range": etag}}, nil)
	if !bytes.Equal(rest.body, img[200000:]) {
		t.Errorf("resumed from 200000: %d bytes", len(rest.body))
	}
	mid := e.must(206, req{method: "GET", path: content, key: e.adminKey, header: map[string]string{"Range": "bytes=1000-1999"}}, nil)
	if !bytes.Equal(mid.body, img[1000:2000]) {
		t.Errorf("range 1000-1999: %d bytes", len(mid.body))
	}
	// If-Range with another image's tag: the whole image, not a range of the wrong one.
	if r := e.do(req{method: "GET", path: content, key: e.adminKey, header: map[string]string{"Range": "bytes=10-", "If-Range": `"other"`}}); r.status != 200 {
		t.Errorf("If-Range of another image: %d", r.status)
	}
	var page listResponse[Firmware]
	e.must(200, req{method: "GET", path: "/v1/firmware?class=van", key: e.adminKey}, &page)
	if len(page.Items) != 1 {
		t.Errorf("list by class: %+v", page.Items)
	}
	e.must(200, req{method: "GET", path: "/v1/firmware?class=truck", key: e.adminKey}, &page)
	if len(page.Items) != 0 {
		t.Errorf("list by another class: %+v", page.Items)
	}
	// Only admins of every fleet upload and delete; readers read.
	e.makeFleet("f1")
	_, op := e.makeOperator("o", RoleOperator, "f1")
	if r := e.do(req{method: "POST", path: "/v1/firmware?version=1", key: op, body: img[:10], contentType: "application/octet-stream"}); r.status != 403 {
		t.Errorf("operator upload: %d", r.status)
	}
	e.must(200, req{method: "GET", path: "/v1/firmware/" + fw.ID, key: op}, nil)
	e.must(204, req{method: "DELETE", path: "/v1/firmware/" + fw.ID, key: e.adminKey}, nil)
	if r := e.do(req{method: "GET", path: content, key: e.adminKey}); r.status != 404 {
		t.Errorf("content after delete: %d", r.status)
	}
	if files := firmwareFiles(t, e); len(files) != 0 {
		t.Errorf("files after delete: %v", files)
	}
}
