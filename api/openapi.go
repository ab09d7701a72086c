package api

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"

	"go.yaml.in/yaml/v2"
)

// OpenAPIYAML is the OpenAPI 3 document of the whole API: the contract the
// tests hold every request and answer to.
//
//go:embed openapi.yaml
var OpenAPIYAML []byte

var (
	openAPIOnce sync.Once
	openAPIJSON []byte
	openAPIErr  error
)

// OpenAPIJSON returns the document as JSON, as /v1/openapi.json serves it.
func OpenAPIJSON() ([]byte, error) {
	openAPIOnce.Do(func() {
		var doc any
		if err := yaml.Unmarshal(OpenAPIYAML, &doc); err != nil {
			openAPIErr = fmt.Errorf("openapi.yaml: %w", err)
			return
		}
		openAPIJSON, openAPIErr = json.Marshal(jsonable(doc))
	})
	return openAPIJSON, openAPIErr
}

// jsonable turns yaml.v2's map[any]any into map[string]any.
func jsonable(v any) any {
	switch x := v.(type) {
	case map[any]any:
		m := make(map[string]any, len(x))
		for k, val := range x {
			m[fmt.Sprint(k)] = jsonable(val)
		}
		return m
	case []any:
		for i := range x {
			x[i] = jsonable(x[i])
		}
		return x
	}
	return v
}

// getOpenAPI answers GET /v1/openapi.json, without a key: the contract is
// not a secret, and clients generate code from it.
func (s *Server) getOpenAPI(w http.ResponseWriter, _ *http.Request, _ *principal) error {
	b, err := OpenAPIJSON()
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	_, _ = w.Write(b)
	return nil
}
