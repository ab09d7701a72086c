package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// Error is the one shape of every error the API answers:
//
//	{"code": "not_found", "message": "device \"x\" not found", "details": {...}}
//
// code is stable (clients switch on it); message is for people; details,
// when present, is code-specific (the per-row report of an import, the
// field that failed validation).
type Error struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
	Details any    `json:"details,omitempty"`
	// RetryAfter, when set, becomes the Retry-After header (429).
	RetryAfter time.Duration `json:"-"`
}

func (e *Error) Error() string { return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Message) }

// Error codes, by status.
func errBadRequest(format string, a ...any) *Error {
	return &Error{Status: http.StatusBadRequest, Code: "bad_request", Message: fmt.Sprintf(format, a...)}
}

func errUnauthorized() *Error {
	// One answer for every failure (no key, unknown key id, bad secret,
	// revoked, expired, disabled operator): nothing tells whether an id
	// exists.
	return &Error{Status: http.StatusUnauthorized, Code: "unauthorized", Message: "a valid API key is required (Authorization: Bearer drv_...)"}
}

func errForbidden(format string, a ...any) *Error {
	return &Error{Status: http.StatusForbidden, Code: "forbidden", Message: fmt.Sprintf(format, a...)}
}

func errNotFound(kind, id string) *Error {
	return &Error{Status: http.StatusNotFound, Code: "not_found", Message: fmt.Sprintf("%s %q not found", kind, id)}
}

func errConflict(format string, a ...any) *Error {
	return &Error{Status: http.StatusConflict, Code: "conflict", Message: fmt.Sprintf(format, a...)}
}

func errPrecondition(etag string) *Error {
	return &Error{Status: http.StatusPreconditionFailed, Code: "precondition_failed",
		Message: "If-Match does not match the current version: read it again and retry",
		Details: map[string]string{"etag": etag}}
}

// errInvalid is a request that is well-formed but refused: a bad device
// id, an unknown fleet, a state transition that does not exist.
func errInvalid(field, format string, a ...any) *Error {
	return &Error{Status: http.StatusUnprocessableEntity, Code: "invalid", Message: fmt.Sprintf(format, a...),
		Details: map[string]string{"field": field}}
}

func errTooMany(retry time.Duration) *Error {
	return &Error{Status: http.StatusTooManyRequests, Code: "too_many_requests",
		Message: "too many failed authentications from this address or for this key; retry later", RetryAfter: retry}
}

func errTooLarge(limit int64) *Error {
	return &Error{Status: http.StatusRequestEntityTooLarge, Code: "too_large", Message: fmt.Sprintf("request body over %d bytes", limit)}
}

// errGone tells a follower that its version is older than what the feed
// keeps: it must take a new snapshot.
func errGone(since, horizon int64) *Error {
	return &Error{Status: http.StatusGone, Code: "resync_required",
		Message: "the feed no longer holds every change after this version: take a new snapshot",
		Details: map[string]int64{"since": since, "horizon": horizon}}
}

var errInternal = &Error{Status: http.StatusInternalServerError, Code: "internal", Message: "internal error; it is logged"}

// asAPIError turns err into the Error to answer.
func asAPIError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return errTooLarge(mbe.Limit)
	}
	return errInternal
}

// writeError writes e as JSON with its status.
func writeError(w http.ResponseWriter, e *Error) {
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((e.RetryAfter+time.Second-1)/time.Second)))
	}
	writeJSON(w, e.Status, e)
}

// writeJSON writes v as the JSON body with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	_ = enc.Encode(v)
}
