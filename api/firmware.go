package api

import (
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/drover-telemetry/drover/internal/atomicfile"
)

// Firmware artifacts (docs/firmware.md): uploaded as one streamed body,
// hashed (SHA-256) while written to the local store (DataDir/firmware, one
// file per artifact, written atomically), described by a version and the
// vehicle classes it is for. The content is served with HTTP range
// requests, so that a transfer cut anywhere resumes from its last byte.
// Firmware is fleet-wide (it targets vehicle classes): admins of every
// fleet upload and delete it; every reader sees it.

// Firmware is an artifact as the API shows it.
type Firmware struct {
	ID        string    `json:"id"`
	Version   string    `json:"version"`
	Classes   []string  `json:"classes"`
	Size      int64     `json:"size"`
	SHA256    string    `json:"sha256"`
	CreatedAt time.Time `json:"created_at"`
	CreatedBy string    `json:"created_by"`
}

var versionRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$`)

const firmwareCols = `id, version, classes, size, sha256, created_at, created_by`

func scanFirmware(sc scanner) (Firmware, error) {
	var f Firmware
	var classes string
	var created int64
	if err := sc.Scan(&f.ID, &f.Version, &classes, &f.Size, &f.SHA256, &created, &f.CreatedBy); err != nil {
		return f, err
	}
	if err := json.Unmarshal([]byte(classes), &f.Classes); err != nil || f.Classes == nil {
		f.Classes = []string{}
	}
	f.CreatedAt = msTime(created)
	return f, nil
}

// firmwareDir is the local artifact store.
func (s *Server) firmwareDir() string { return filepath.Join(s.cfg.DataDir, "firmware") }

// uploadFirmware answers POST /v1/firmware?version=V[&classes=a,b][&sha256=H]:
// the body is the image (application/octet-stream), streamed to disk and
// hashed on the way; at most -firmware-max-bytes. With sha256, a body whose
// hash differs is refused (422) and nothing is kept.
func (s *Server) uploadFirmware(w http.ResponseWriter, r *http.Request, p *principal) error {
	q := r.URL.Query()
	version := q.Get("version")
	if !versionRE.MatchString(version) {
		return errInvalid("version", "version: %q, want 1 to 64 of A-Z a-z 0-9 _ . + - (not starting with _ . + -)", version)
	}
	classes := []string{}
	if c := q.Get("classes"); c != "" {
		for _, id := range strings.Split(c, ",") {
			if !refIDRE.MatchString(id) {
				return errInvalid("classes", "classes: %q is not a class id", id)
			}
			classes = append(classes, id)
		}
	}
	want := strings.ToLower(q.Get("sha256"))
	if want != "" && (len(want) != 64 || strings.Trim(want, "0123456789abcdef") != "") {
		return errBadRequest("sha256: want 64 hex digits")
	}
	ctx := r.Context()
	// Classes must exist: an artifact for a class nobody has is a typo.
	for _, id := range classes {
		var one int
		if err := s.db.rdb.QueryRowContext(ctx, `SELECT 1 FROM classes WHERE id = $1`, id).Scan(&one); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return errInvalid("classes", "unknown class %q", id)
			}
			return fmt.Errorf("read class: %w", err)
		}
	}
	if err := os.MkdirAll(s.firmwareDir(), 0o700); err != nil {
		return fmt.Errorf("firmware store: %w", err)
	}
	id := newID("fw_")
	path := filepath.Join(s.firmwareDir(), id)
	max := s.cfg.FirmwareMaxBytes
	h := sha256.New()
	var size int64
	err := atomicfile.WriteFunc(path, 0o600, func(out io.Writer) error {
		n, err := io.Copy(io.MultiWriter(out, h), io.LimitReader(r.Body, max+1))
		size = n
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				return errTooLarge(mbe.Limit)
			}
			return errBadRequest("body: %v", err)
		}
		if n > max {
			return &Error{Status: http.StatusRequestEntityTooLarge, Code: "too_large",
				Message: fmt.Sprintf("firmware over -firmware-max-bytes (%d bytes)", max)}
		}
		if n == 0 {
			return errInvalid("body", "empty firmware image")
		}
		if sum := hex.EncodeToString(h.Sum(nil)); want != "" && sum != want {
			return errInvalid("sha256", "the body's SHA-256 is %s, not the %s given: a transfer error; upload again", sum, want)
		}
		return nil
	})
	if err != nil {
		return err
	}
	fw := Firmware{ID: id, Version: version, Classes: classes, Size: size, SHA256: hex.EncodeToString(h.Sum(nil)), CreatedBy: p.actor()}
	cls, _ := json.Marshal(classes)
	err = s.db.write(ctx, func(t *tx) error {
		fw.CreatedAt = msTime(t.ms())
		if _, err := t.ExecContext(ctx, `INSERT INTO firmware (`+firmwareCols+`) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
			id, version, string(cls), size, fw.SHA256, t.ms(), p.actor()); err != nil {
			return fmt.Errorf("insert firmware: %w", err)
		}
		return t.audit(actorOf(r, p), change{action: "firmware.create", objType: "firmware", objID: id, after: fw})
	})
	if err != nil {
		_ = os.Remove(path)
		return err
	}
	w.Header().Set("Location", "/v1/firmware/"+id)
	writeJSON(w, http.StatusCreated, fw)
	return nil
}

func (s *Server) loadFirmware(r *http.Request) (Firmware, error) {
	id := r.PathValue("id")
	fw, err := scanFirmware(s.db.rdb.QueryRowContext(r.Context(), `SELECT `+firmwareCols+` FROM firmware WHERE id = $1`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return fw, errNotFound("firmware", id)
	}
	if err != nil {
		return fw, fmt.Errorf("read firmware %s: %w", id, err)
	}
	return fw, nil
}

// listFirmware answers GET /v1/firmware[?version=][&class=]: newest first.
func (s *Server) listFirmware(w http.ResponseWriter, r *http.Request, _ *principal) error {
	pg, err := parsePage(r)
	if err != nil {
		return err
	}
	var q queryArgs
	if v := r.URL.Query().Get("version"); v != "" {
		q.add("version = ?", v)
	}
	if pg.cursor != "" {
		q.add("id < ?", pg.cursor)
	}
	rows, err := s.db.rdb.QueryContext(r.Context(), `SELECT `+firmwareCols+` FROM firmware`+q.clause()+
		` ORDER BY id DESC LIMIT `+strconv.Itoa(pg.limit+1), q.args...)
	if err != nil {
		return fmt.Errorf("list firmware: %w", err)
	}
	defer rows.Close()
	class := r.URL.Query().Get("class")
	var out []Firmware
	for rows.Next() {
		fw, err := scanFirmware(rows)
		if err != nil {
			return fmt.Errorf("list firmware: %w", err)
		}
		if class == "" || slices.Contains(fw.Classes, class) {
			out = append(out, fw)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("list firmware: %w", err)
	}
	writeJSON(w, http.StatusOK, pageOf(out, pg.limit, func(f Firmware) string { return f.ID }))
	return nil
}

// getFirmware answers GET /v1/firmware/{id}.
func (s *Server) getFirmware(w http.ResponseWriter, r *http.Request, _ *principal) error {
	fw, err := s.loadFirmware(r)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, fw)
	return nil
}

// firmwareContent answers GET /v1/firmware/{id}/content: the image, with
// range requests (206) so that a transfer resumes from its last byte, the
// SHA-256 as the ETag (If-Range keeps a resumed transfer on the same
// image) and in X-Checksum-Sha256.
func (s *Server) firmwareContent(w http.ResponseWriter, r *http.Request, _ *principal) error {
	fw, err := s.loadFirmware(r)
	if err != nil {
		return err
	}
	f, err := os.Open(filepath.Join(s.firmwareDir(), fw.ID))
	if err != nil {
		return fmt.Errorf("open firmware %s: %w", fw.ID, err)
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("ETag", `"`+fw.SHA256+`"`)
	w.Header().Set("X-Checksum-Sha256", fw.SHA256)
	http.ServeContent(w, r, "", fw.CreatedAt, f)
	return nil
}

// deleteFirmware answers DELETE /v1/firmware/{id}: 409 while a campaign
// names it; otherwise the record, then the file (a file left by a crash
// between the two is harmless: nothing names it).
func (s *Server) deleteFirmware(w http.ResponseWriter, r *http.Request, p *principal) error {
	fw, err := s.loadFirmware(r)
	if err != nil {
		return err
	}
	err = s.db.write(r.Context(), func(t *tx) error {
		var camp string
		err := t.QueryRowContext(r.Context(), `SELECT id FROM campaigns WHERE firmware_id = $1 LIMIT 1`, fw.ID).Scan(&camp)
		if err == nil {
			return errConflict("firmware %s is used by campaign %s: delete it when unused", fw.ID, camp)
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("delete firmware: %w", err)
		}
		if _, err := t.ExecContext(r.Context(), `DELETE FROM firmware WHERE id = $1`, fw.ID); err != nil {
			return fmt.Errorf("delete firmware: %w", err)
		}
		return t.audit(actorOf(r, p), change{action: "firmware.delete", objType: "firmware", objID: fw.ID, before: fw})
	})
	if err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(s.firmwareDir(), fw.ID)); err != nil && !os.IsNotExist(err) {
		s.log.Warn("api: firmware file not removed", "firmware", fw.ID, "err", err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
