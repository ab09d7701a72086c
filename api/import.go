package api

import (
	"bufio"
	"context"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"

	"github.com/drover-telemetry/drover/internal/registry"
	"github.com/drover-telemetry/drover/telemetry"
)

// ImportRow is one device of an import. The JSON form is a superset of the
// registry file's device ({"id", "token_sha256", "fleet", "class",
// "region"}), so a registry file imports as it is.
type ImportRow struct {
	ID          string            `json:"id"`
	Name        string            `json:"name"`
	Fleet       string            `json:"fleet"`
	Class       string            `json:"class"`
	Region      string            `json:"region"`
	Labels      map[string]string `json:"labels"`
	State       string            `json:"state"`
	TokenSHA256 string            `json:"token_sha256"`
}

// ImportError is one refused row: row counts from 1 (the first device,
// or the first CSV line after the header).
type ImportError struct {
	Row     int    `json:"row"`
	ID      string `json:"id"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

// ImportResult is the answer to a successful import.
type ImportResult struct {
	Created int `json:"created"`
	Updated int `json:"updated"`
	// Tokens are the tokens issued (issue_tokens=true), shown once.
	Tokens  []IssuedToken `json:"tokens"`
	Version int64         `json:"version"`
}

// IssuedToken is a device's new token.
type IssuedToken struct {
	ID    string `json:"id"`
	Token string `json:"token"`
}

// maxImportErrors bounds the errors listed in a refusal (all are counted).
const maxImportErrors = 1000

// csvColumns are the columns a CSV import may have; id is required, the
// header names them in any order. labels is "k=v;k=v".
var csvColumns = []string{"id", "name", "fleet", "class", "region", "labels", "state", "token_sha256"}

// importDevices answers POST /v1/imports/devices: devices in bulk, from a
// JSON body ({"devices": [...]}, a registry file included) or CSV
// (text/csv, a header line first). All or nothing: one bad row refuses the
// whole import with 422 and a report of every bad row.
//
// Query: mode=create (default; an existing id is an error) or upsert
// (existing devices are updated); issue_tokens=true issues a token to
// every row without token_sha256 (returned once); create_missing=true
// creates unknown fleets, classes and regions (admins of every fleet).
func (s *Server) importDevices(w http.ResponseWriter, r *http.Request, p *principal) error {
	q := r.URL.Query()
	mode := q.Get("mode")
	if mode == "" {
		mode = "create"
	}
	if mode != "create" && mode != "upsert" {
		return errBadRequest("mode: %q, want create or upsert", mode)
	}
	issue, createMissing := q.Get("issue_tokens") == "true", q.Get("create_missing") == "true"
	if createMissing && !permAdminAll.allows(p) {
		return errForbidden("create_missing needs an admin of every fleet")
	}
	rows, err := s.parseImport(r)
	if err != nil {
		return err
	}
	if len(rows) == 0 {
		return errInvalid("devices", "no devices in the import")
	}
	if len(rows) > s.cfg.MaxImportRows {
		return errInvalid("devices", "%d devices, at most %d per import (-max-import-rows)", len(rows), s.cfg.MaxImportRows)
	}
	var res ImportResult
	var rowErrs []ImportError
	err = s.db.write(r.Context(), func(t *tx) error {
		var err error
		res, rowErrs, err = s.applyImport(t, r, p, rows, mode == "upsert", issue, createMissing)
		if err != nil {
			return err
		}
		if len(rowErrs) > 0 {
			return errImportRefused // roll back: all or nothing
		}
		return nil
	})
	if errors.Is(err, errImportRefused) {
		s.metrics.importRows.WithLabelValues("refused").Add(float64(len(rows)))
		listed := rowErrs
		if len(listed) > maxImportErrors {
			listed = listed[:maxImportErrors]
		}
		return &Error{Status: http.StatusUnprocessableEntity, Code: "import_refused",
			Message: fmt.Sprintf("%d of %d rows refused; nothing was imported", len(rowErrs), len(rows)),
			Details: map[string]any{"error_count": len(rowErrs), "errors": listed}}
	}
	if err != nil {
		return err
	}
	s.metrics.importRows.WithLabelValues("imported").Add(float64(len(rows)))
	s.log.Info("api: devices imported", "created", res.Created, "updated", res.Updated, "actor", p.actor(), "request_id", requestID(r))
	writeJSON(w, http.StatusOK, res)
	return nil
}

var errImportRefused = errors.New("import refused")

func (s *Server) parseImport(r *http.Request) ([]ImportRow, error) {
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch ct {
	case "application/json":
		var body struct {
			Devices []ImportRow `json:"devices"`
		}
		if err := decodeJSON(r, &body); err != nil {
			return nil, err
		}
		return body.Devices, nil
	case "text/csv":
		return parseCSV(r.Body)
	default:
		return nil, &Error{Status: http.StatusUnsupportedMediaType, Code: "unsupported_media_type",
			Message: "Content-Type: want application/json or text/csv"}
	}
}

func parseCSV(body io.Reader) ([]ImportRow, error) {
	cr := csv.NewReader(bufio.NewReaderSize(body, 64<<10))
	cr.ReuseRecord = true
	cr.TrimLeadingSpace = true
	header, err := cr.Read()
	if err != nil {
		return nil, csvError("csv: header line", err)
	}
	cols := make([]int, len(header))
	seen := map[string]bool{}
	for i, h := range header {
		h = strings.ToLower(strings.TrimSpace(h))
		cols[i] = -1
		for j, c := range csvColumns {
			if h == c {
				cols[i] = j
			}
		}
		if cols[i] < 0 {
			return nil, errBadRequest("csv: unknown column %q, want some of %v", h, csvColumns)
		}
		if seen[h] {
			return nil, errBadRequest("csv: column %q twice", h)
		}
		seen[h] = true
	}
	if !seen["id"] {
		return nil, errBadRequest("csv: no id column")
	}
	var rows []ImportRow
	for line := 2; ; line++ {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			return rows, nil
		}
		if err != nil {
			return nil, csvError("csv", err)
		}
		var row ImportRow
		for i, v := range rec {
			switch csvColumns[cols[i]] {
			case "id":
				row.ID = v
			case "name":
				row.Name = v
			case "fleet":
				row.Fleet = v
			case "class":
				row.Class = v
			case "region":
				row.Region = v
			case "state":
				row.State = v
			case "token_sha256":
				row.TokenSHA256 = v
			case "labels":
				if v == "" {
					continue
				}
				row.Labels = map[string]string{}
				for kv := range strings.SplitSeq(v, ";") {
					k, val, ok := strings.Cut(kv, "=")
					if !ok {
						return nil, errBadRequest("csv line %d: labels %q: want k=v;k=v", line, v)
					}
					row.Labels[strings.TrimSpace(k)] = strings.TrimSpace(val)
				}
			}
		}
		rows = append(rows, row)
	}
}

// csvError is a refused CSV body: 413 when it was cut at the body limit,
// 400 otherwise.
func csvError(what string, err error) error {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return errTooLarge(mbe.Limit)
	}
	return errBadRequest("%s: %v", what, err)
}

// applyImport checks every row and, when all pass, writes them. It
// returns the row errors (then nothing must be committed).
func (s *Server) applyImport(t *tx, r *http.Request, p *principal, rows []ImportRow, upsert, issue, createMissing bool) (ImportResult, []ImportError, error) {
	var res ImportResult
	var errs []ImportError
	bad := func(i int, id, code, format string, a ...any) {
		errs = append(errs, ImportError{Row: i + 1, ID: id, Code: code, Message: fmt.Sprintf(format, a...)})
	}
	ids := make([]string, 0, len(rows))
	inFile := make(map[string]int, len(rows))
	for i := range rows {
		row := &rows[i]
		if err := telemetry.ValidateDeviceID(row.ID); err != nil {
			bad(i, row.ID, "invalid_id", "%v", err)
			continue
		}
		if j, dup := inFile[row.ID]; dup {
			bad(i, row.ID, "duplicate", "id also on row %d", j+1)
			continue
		}
		inFile[row.ID] = i
		ids = append(ids, row.ID)
		if len(row.Name) > maxNameLen {
			bad(i, row.ID, "invalid", "name over %d bytes", maxNameLen)
		}
		if err := validateLabels(row.Labels); err != nil {
			bad(i, row.ID, "invalid", "%s", asAPIError(err).Message)
		}
		switch row.State {
		case "", StateActive, StateSuspended, StateDecommissioned:
		default:
			bad(i, row.ID, "invalid", "state %q: want active, suspended or decommissioned", row.State)
		}
		if row.TokenSHA256 != "" {
			if b, err := hex.DecodeString(row.TokenSHA256); err != nil || len(b) != 32 {
				bad(i, row.ID, "invalid", "token_sha256: want 64 hex characters")
			}
			row.TokenSHA256 = strings.ToLower(row.TokenSHA256)
		}
		if row.Fleet == "" && !p.all {
			bad(i, row.ID, "invalid", "fleet: required (your key is scoped to %v)", p.fleetList())
		} else if row.Fleet != "" && !p.sees(row.Fleet) {
			bad(i, row.ID, "unknown_fleet", "unknown fleet %q", row.Fleet)
		}
	}
	// References: load the catalogs once (they are small).
	for _, c := range []catalog{fleets, classes, regions} {
		known, err := catalogIDs(t.ctx, t, c.table)
		if err != nil {
			return res, nil, err
		}
		for i, row := range rows {
			ref := map[string]string{"fleets": row.Fleet, "classes": row.Class, "regions": row.Region}[c.table]
			if ref == "" || known[ref] {
				continue
			}
			if !refIDRE.MatchString(ref) {
				bad(i, row.ID, "invalid", "%s %q: want 1-64 of A-Z a-z 0-9 . _ -", c.kind, ref)
				continue
			}
			if !createMissing {
				if c.table != "fleets" || p.sees(ref) {
					bad(i, row.ID, "unknown_"+c.kind, "unknown %s %q (create it first, or import with create_missing=true)", c.kind, ref)
				}
				continue
			}
			v := t.next()
			if _, err := t.ExecContext(t.ctx, `INSERT INTO `+c.table+` (id, name, description, version, created_at, updated_at)
VALUES ($1, $1, '', $2, $3, $3)`, ref, v, t.ms()); err != nil {
				return res, nil, fmt.Errorf("import: create %s %s: %w", c.kind, ref, err)
			}
			if err := t.audit(actorOf(r, p), change{action: c.kind + ".create", objType: c.kind, objID: ref, fleet: c.fleetOf(ref),
				after: CatalogItem{ID: ref, Name: ref, Version: v}, version: v}); err != nil {
				return res, nil, err
			}
			known[ref] = true
		}
	}
	existing, err := existingDevices(t.ctx, t, s.db.bulkPlaceholders, ids)
	if err != nil {
		return res, nil, err
	}
	for id, fleet := range existing {
		i := inFile[id]
		switch {
		case !upsert:
			bad(i, id, "exists", "device %q already exists (import with mode=upsert to update it)", id)
		case !p.sees(fleet):
			bad(i, id, "exists", "device %q already exists", id)
		}
	}
	if len(errs) > 0 {
		return res, errs, nil
	}
	res.Tokens = []IssuedToken{}
	if err := s.writeImport(t, r, p, rows, existing, issue, &res); err != nil {
		return res, nil, err
	}
	res.Version = t.version
	return res, nil, nil
}

func catalogIDs(ctx context.Context, q querier, table string) (map[string]bool, error) {
	rows, err := q.QueryContext(ctx, `SELECT id FROM `+table)
	if err != nil {
		return nil, fmt.Errorf("import: read %s: %w", table, err)
	}
	defer rows.Close()
	known := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("import: read %s: %w", table, err)
		}
		known[id] = true
	}
	return known, rows.Err()
}

// existingDevices returns the fleet of each id that exists.
func existingDevices(ctx context.Context, q querier, bulk func(from, n int) string, ids []string) (map[string]string, error) {
	out := map[string]string{}
	const chunk = 500
	for len(ids) > 0 {
		n := min(chunk, len(ids))
		args := make([]any, n)
		for i, id := range ids[:n] {
			args[i] = id
		}
		rows, err := q.QueryContext(ctx, `SELECT id, COALESCE(fleet, '') FROM devices WHERE id IN (`+bulk(1, n)+`)`, args...)
		if err != nil {
			return nil, fmt.Errorf("import: read devices: %w", err)
		}
		for rows.Next() {
			var id, fleet string
			if err := rows.Scan(&id, &fleet); err != nil {
				rows.Close()
				return nil, fmt.Errorf("import: read devices: %w", err)
			}
			out[id] = fleet
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("import: read devices: %w", err)
		}
		ids = ids[n:]
	}
	return out, nil
}

// exportRegistry answers GET /v1/exports/registry: the registry file
// (internal/registry's format) of the devices in the caller's fleets that
// a frontend would let in today: active, with a token. A rotation's
// previous token is not in the file (the format has one hash per device).
func (s *Server) exportRegistry(w http.ResponseWriter, r *http.Request, p *principal) error {
	var qa queryArgs
	qa.add("state = ?", StateActive)
	qa.where = append(qa.where, "token_hash IS NOT NULL")
	if fl := p.scopeFleets(); fl != nil {
		qa.in("fleet", fl)
	}
	rows, err := s.db.rdb.QueryContext(r.Context(), `SELECT id, token_hash, COALESCE(fleet, ''), COALESCE(class, ''), COALESCE(region, '')
FROM devices`+qa.clause()+` ORDER BY id`, qa.args...)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	defer rows.Close()
	w.Header().Set("Content-Type", "application/json")
	bw := bufio.NewWriterSize(w, 64<<10)
	defer bw.Flush()
	_, _ = bw.WriteString(`{"devices": [`)
	n := 0
	for rows.Next() {
		var d registry.Device
		if err := rows.Scan(&d.ID, &d.TokenSHA256, &d.Fleet, &d.Class, &d.Region); err != nil {
			s.log.Error("api: export cut", "err", err)
			return nil
		}
		b, _ := json.Marshal(d)
		if n > 0 {
			_ = bw.WriteByte(',')
		}
		_, _ = bw.WriteString("\n  ")
		_, _ = bw.Write(b)
		n++
	}
	if err := rows.Err(); err != nil {
		s.log.Error("api: export cut", "err", err)
		return nil
	}
	_, _ = bw.WriteString("\n]}\n")
	return nil
}
