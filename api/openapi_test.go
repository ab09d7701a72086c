package api

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
)

// TestOpenAPIDocumentMatchesRoutes: every route the server has is in
// openapi.yaml with the same method and path, and every operation of the
// document is a route. A new endpoint that is not documented fails here.
func TestOpenAPIDocumentMatchesRoutes(t *testing.T) {
	doc, err := loadSpec()
	if err != nil {
		t.Fatalf("openapi.yaml: %v", err)
	}
	documented := map[string]bool{}
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			documented[method+" "+path] = true
		}
	}
	s := &Server{}
	coded := map[string]bool{}
	for _, rt := range s.routeTable() {
		k := rt.method + " " + rt.pattern
		coded[k] = true
		if !documented[k] {
			t.Errorf("route %s is not in openapi.yaml", k)
		}
	}
	for k := range documented {
		if !coded[k] {
			t.Errorf("openapi.yaml documents %s, which the server does not serve", k)
		}
	}
}

// TestOpenAPIServedAsJSON: /v1/openapi.json is the embedded document, as
// JSON, without a key.
func TestOpenAPIServedAsJSON(t *testing.T) {
	e := startEnv(t, backends[0])
	res := e.must(200, req{method: "GET", path: "/v1/openapi.json"}, nil)
	var doc map[string]any
	res.json(t, &doc)
	if doc["openapi"] != "3.0.3" {
		t.Errorf("openapi = %v", doc["openapi"])
	}
	paths, _ := doc["paths"].(map[string]any)
	var names []string
	for p := range paths {
		names = append(names, p)
	}
	slices.Sort(names)
	if !slices.Contains(names, "/v1/devices/{id}/token/rotate") {
		t.Errorf("paths lack the rotate endpoint: %v", names)
	}
	if b, _ := json.Marshal(doc); !strings.Contains(string(b), `"bearer"`) {
		t.Error("no bearer security scheme in the served document")
	}
}
