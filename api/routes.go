package api

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// route is one endpoint: the API's whole surface is this table, which the
// OpenAPI document and the scope tests are checked against.
type route struct {
	method, pattern string
	perm            perm
	public          bool // no key needed (the OpenAPI document)
	h               func(w http.ResponseWriter, r *http.Request, p *principal) error
}

// routeTable lists every endpoint. A new endpoint goes here, in
// openapi.yaml and in the scope test's table (tests fail until all three
// agree).
func (s *Server) routeTable() []route {
	return []route{
		{method: "GET", pattern: "/v1/openapi.json", public: true, h: s.getOpenAPI},
		{method: "GET", pattern: "/v1/me", perm: permAny, h: s.getMe},

		{method: "GET", pattern: "/v1/devices", perm: permRead, h: s.listDevices},
		{method: "POST", pattern: "/v1/devices", perm: permDevices, h: s.createDevice},
		{method: "GET", pattern: "/v1/devices/{id}", perm: permRead, h: s.getDevice},
		{method: "PATCH", pattern: "/v1/devices/{id}", perm: permDevices, h: s.updateDevice},
		{method: "DELETE", pattern: "/v1/devices/{id}", perm: permAdmin, h: s.deleteDevice},
		{method: "POST", pattern: "/v1/devices/{id}/state", perm: permDevices, h: s.setDeviceState},
		{method: "POST", pattern: "/v1/devices/{id}/token", perm: permDevices, h: s.issueToken},
		{method: "POST", pattern: "/v1/devices/{id}/token/rotate", perm: permDevices, h: s.rotateToken},
		{method: "DELETE", pattern: "/v1/devices/{id}/token", perm: permDevices, h: s.revokeToken},
		{method: "POST", pattern: "/v1/imports/devices", perm: permDevices, h: s.importDevices},
		{method: "GET", pattern: "/v1/exports/registry", perm: permDevices, h: s.exportRegistry},

		{method: "GET", pattern: "/v1/fleets", perm: permRead, h: s.catalogList(fleets)},
		{method: "POST", pattern: "/v1/fleets", perm: permAdminAll, h: s.catalogCreate(fleets)},
		{method: "GET", pattern: "/v1/fleets/{id}", perm: permRead, h: s.catalogGet(fleets)},
		{method: "PATCH", pattern: "/v1/fleets/{id}", perm: permAdmin, h: s.catalogUpdate(fleets)},
		{method: "DELETE", pattern: "/v1/fleets/{id}", perm: permAdminAll, h: s.catalogDelete(fleets)},
		{method: "GET", pattern: "/v1/classes", perm: permRead, h: s.catalogList(classes)},
		{method: "POST", pattern: "/v1/classes", perm: permAdminAll, h: s.catalogCreate(classes)},
		{method: "GET", pattern: "/v1/classes/{id}", perm: permRead, h: s.catalogGet(classes)},
		{method: "PATCH", pattern: "/v1/classes/{id}", perm: permAdminAll, h: s.catalogUpdate(classes)},
		{method: "DELETE", pattern: "/v1/classes/{id}", perm: permAdminAll, h: s.catalogDelete(classes)},
		{method: "GET", pattern: "/v1/regions", perm: permRead, h: s.catalogList(regions)},
		{method: "POST", pattern: "/v1/regions", perm: permAdminAll, h: s.catalogCreate(regions)},
		{method: "GET", pattern: "/v1/regions/{id}", perm: permRead, h: s.catalogGet(regions)},
		{method: "PATCH", pattern: "/v1/regions/{id}", perm: permAdminAll, h: s.catalogUpdate(regions)},
		{method: "DELETE", pattern: "/v1/regions/{id}", perm: permAdminAll, h: s.catalogDelete(regions)},

		{method: "GET", pattern: "/v1/live-tokens", perm: permRead, h: s.listLiveTokens},
		{method: "POST", pattern: "/v1/live-tokens", perm: permDevices, h: s.createLiveToken},
		{method: "GET", pattern: "/v1/live-tokens/{id}", perm: permRead, h: s.getLiveToken},
		{method: "DELETE", pattern: "/v1/live-tokens/{id}", perm: permDevices, h: s.revokeLiveToken},

		{method: "GET", pattern: "/v1/operators", perm: permAdmin, h: s.listOperators},
		{method: "POST", pattern: "/v1/operators", perm: permAdmin, h: s.createOperator},
		{method: "GET", pattern: "/v1/operators/{id}", perm: permAdmin, h: s.getOperator},
		{method: "PATCH", pattern: "/v1/operators/{id}", perm: permAdmin, h: s.updateOperator},
		{method: "DELETE", pattern: "/v1/operators/{id}", perm: permAdmin, h: s.deleteOperator},
		{method: "GET", pattern: "/v1/operators/{id}/keys", perm: permAdmin, h: s.listKeys},
		{method: "POST", pattern: "/v1/operators/{id}/keys", perm: permAdmin, h: s.createKey},
		{method: "DELETE", pattern: "/v1/operators/{id}/keys/{key}", perm: permAdmin, h: s.revokeKey},

		{method: "GET", pattern: "/v1/devices/{id}/commands", perm: permRead, h: s.listCommands},
		{method: "POST", pattern: "/v1/devices/{id}/commands", perm: permDevices, h: s.createCommand},
		{method: "GET", pattern: "/v1/devices/{id}/commands/{cmd}", perm: permRead, h: s.getCommand},
		{method: "POST", pattern: "/v1/devices/{id}/commands/{cmd}/cancel", perm: permDevices, h: s.cancelCommand},
		{method: "GET", pattern: "/v1/commands/events", perm: permRead, h: s.commandEvents},

		{method: "GET", pattern: "/v1/firmware", perm: permRead, h: s.listFirmware},
		{method: "POST", pattern: "/v1/firmware", perm: permAdminAll, h: s.uploadFirmware},
		{method: "GET", pattern: "/v1/firmware/{id}", perm: permRead, h: s.getFirmware},
		{method: "DELETE", pattern: "/v1/firmware/{id}", perm: permAdminAll, h: s.deleteFirmware},
		{method: "POST", pattern: "/v1/firmware-campaigns", perm: permAdminAll, h: s.createCampaign},
		{method: "GET", pattern: "/v1/firmware-campaigns/{id}", perm: permRead, h: s.getCampaign},
		{method: "GET", pattern: "/v1/firmware-campaigns/{id}/devices", perm: permRead, h: s.campaignDevices},
		{method: "POST", pattern: "/v1/firmware-campaigns/{id}/{action}", perm: permAdminAll, h: s.campaignAction},
		{method: "GET", pattern: "/v1/firmware/{id}/content", perm: permAny, h: s.firmwareContent}, // followers too: frontends serve devices

		{method: "GET", pattern: "/v1/audit", perm: permRead, h: s.listAudit},

		{method: "GET", pattern: "/v1/alerts", perm: permRead, h: s.listAlerts},
		{method: "GET", pattern: "/v1/alerts/{id}", perm: permRead, h: s.getAlert},
		{method: "POST", pattern: "/v1/alerts/{id}/ack", perm: permDevices, h: s.ackAlert},
		{method: "POST", pattern: "/v1/alerts/{id}/clear", perm: permDevices, h: s.clearAlert},
		{method: "POST", pattern: "/v1/alerts/events", perm: permFollower, h: s.alertEvents},
		{method: "GET", pattern: "/v1/alerts/config", perm: permFollower, h: s.alertConfig},
		{method: "GET", pattern: "/v1/alert-rules", perm: permRead, h: s.alertList(ruleKind)},
		{method: "POST", pattern: "/v1/alert-rules", perm: permDevices, h: s.alertCreate(ruleKind)},
		{method: "GET", pattern: "/v1/alert-rules/{id}", perm: permRead, h: s.alertGet(ruleKind)},
		{method: "PATCH", pattern: "/v1/alert-rules/{id}", perm: permDevices, h: s.alertUpdate(ruleKind)},
		{method: "DELETE", pattern: "/v1/alert-rules/{id}", perm: permDevices, h: s.alertDelete(ruleKind)},
		{method: "GET", pattern: "/v1/geofences", perm: permRead, h: s.alertList(fenceKind)},
		{method: "POST", pattern: "/v1/geofences", perm: permDevices, h: s.alertCreate(fenceKind)},
		{method: "GET", pattern: "/v1/geofences/{id}", perm: permRead, h: s.alertGet(fenceKind)},
		{method: "PATCH", pattern: "/v1/geofences/{id}", perm: permDevices, h: s.alertUpdate(fenceKind)},
		{method: "DELETE", pattern: "/v1/geofences/{id}", perm: permDevices, h: s.alertDelete(fenceKind)},
		{method: "POST", pattern: "/v1/imports/geofences", perm: permDevices, h: s.importGeofences},
		{method: "GET", pattern: "/v1/exports/geofences", perm: permRead, h: s.exportGeofences},
		{method: "GET", pattern: "/v1/alert-webhooks", perm: permAdmin, h: s.alertList(webhookKind)},
		{method: "POST", pattern: "/v1/alert-webhooks", perm: permAdmin, h: s.alertCreate(webhookKind)},
		{method: "GET", pattern: "/v1/alert-webhooks/{id}", perm: permAdmin, h: s.alertGet(webhookKind)},
		{method: "PATCH", pattern: "/v1/alert-webhooks/{id}", perm: permAdmin, h: s.alertUpdate(webhookKind)},
		{method: "DELETE", pattern: "/v1/alert-webhooks/{id}", perm: permAdmin, h: s.alertDelete(webhookKind)},

		{method: "GET", pattern: "/v1/feed/snapshot", perm: permFollower, h: s.feedSnapshot},
		{method: "GET", pattern: "/v1/feed/changes", perm: permFollower, h: s.feedChanges},
		{method: "POST", pattern: "/v1/feed/presence", perm: permFollower, h: s.feedPresence},
		{method: "GET", pattern: "/v1/feed/live-tokens", perm: permFollower, h: s.feedLiveTokens},
		{method: "GET", pattern: "/v1/frontends/{id}/commands", perm: permFollower, h: s.frontendCommands},
		{method: "POST", pattern: "/v1/frontends/{id}/command-reports", perm: permFollower, h: s.frontendCommandReports},
	}
}

// decodeJSON reads a JSON body into v, refusing unknown fields and
// trailing data: a typo in a field name is an error, not a silent no-op.
func decodeJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return errTooLarge(mbe.Limit)
		}
		if errors.Is(err, io.EOF) {
			return errBadRequest("empty body: a JSON object is required")
		}
		return errBadRequest("body: %v", err)
	}
	if dec.More() {
		return errBadRequest("body: data after the JSON object")
	}
	return nil
}

// decodeOptionalJSON is decodeJSON for a body that may be absent (then v
// keeps its defaults).
func decodeOptionalJSON(r *http.Request, v any) error {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return errTooLarge(mbe.Limit)
		}
		return errBadRequest("body: %v", err)
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return nil
	}
	r.Body = io.NopCloser(bytes.NewReader(b))
	return decodeJSON(r, v)
}

// etag is an object's entity tag: its change version.
func etag(version int64) string { return `"` + strconv.FormatInt(version, 10) + `"` }

// checkIfMatch enforces If-Match when the caller sent one: the update
// applies only to the version the caller read (412 otherwise). Without
// If-Match the update applies to whatever is current (documented: clients
// that may race send it).
func checkIfMatch(r *http.Request, version int64) error {
	im := strings.TrimSpace(r.Header.Get("If-Match"))
	if im == "" || im == "*" {
		return nil
	}
	cur := etag(version)
	for tag := range strings.SplitSeq(im, ",") {
		tag = strings.TrimPrefix(strings.TrimSpace(tag), "W/")
		if tag == cur {
			return nil
		}
	}
	return errPrecondition(cur)
}

// page is the paging of a list request.
type page struct {
	limit  int
	cursor string // decoded: the last key of the previous page
}

const (
	defaultPageSize = 100
	maxPageSize     = 1000
)

func parsePage(r *http.Request) (page, error) {
	q := r.URL.Query()
	p := page{limit: defaultPageSize}
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > maxPageSize {
			return p, errBadRequest("limit: %q, want 1 to %d", l, maxPageSize)
		}
		p.limit = n
	}
	if c := q.Get("cursor"); c != "" {
		b, err := base64.RawURLEncoding.DecodeString(c)
		if err != nil || len(b) == 0 {
			return p, errBadRequest("cursor: not one this API returned")
		}
		p.cursor = string(b)
	}
	return p, nil
}

func encodeCursor(key string) string { return base64.RawURLEncoding.EncodeToString([]byte(key)) }

// listResponse is every list's answer: a page of items and the cursor of
// the next page, empty on the last.
type listResponse[T any] struct {
	Items      []T    `json:"items"`
	NextCursor string `json:"next_cursor"`
}

// pageOf cuts rows (fetched with limit+1) to a page.
func pageOf[T any](rows []T, limit int, key func(T) string) listResponse[T] {
	resp := listResponse[T]{Items: rows}
	if len(rows) > limit {
		resp.Items = rows[:limit]
		resp.NextCursor = encodeCursor(key(rows[limit-1]))
	}
	if resp.Items == nil {
		resp.Items = []T{}
	}
	return resp
}

// queryArgs builds a WHERE clause with $n placeholders.
type queryArgs struct {
	where []string
	args  []any
}

// add appends a condition; each "?" in cond becomes the next placeholder.
func (q *queryArgs) add(cond string, args ...any) {
	for _, a := range args {
		q.args = append(q.args, a)
		cond = strings.Replace(cond, "?", fmt.Sprintf("$%d", len(q.args)), 1)
	}
	q.where = append(q.where, cond)
}

// in appends "col IN (...)".
func (q *queryArgs) in(col string, values []string) {
	if len(values) == 0 {
		q.where = append(q.where, "1 = 0")
		return
	}
	ph := placeholders(len(q.args)+1, len(values))
	for _, v := range values {
		q.args = append(q.args, v)
	}
	q.where = append(q.where, col+" IN ("+ph+")")
}

func (q *queryArgs) clause() string {
	if len(q.where) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(q.where, " AND ")
}

// next returns the next placeholder number.
func (q *queryArgs) next() int { return len(q.args) + 1 }

// scopeFleets returns the fleets a scoped caller sees (nil for every
// fleet).
func (p *principal) scopeFleets() []string {
	if p.all {
		return nil
	}
	return p.fleetList()
}

// likePattern escapes a search text for LIKE ... ESCAPE '\'.
func likePattern(q string) string {
	q = strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(strings.ToLower(q))
	return "%" + q + "%"
}

// writeObject answers an object with its ETag.
func writeObject(w http.ResponseWriter, status int, version int64, v any) error {
	w.Header().Set("ETag", etag(version))
	writeJSON(w, status, v)
	return nil
}
