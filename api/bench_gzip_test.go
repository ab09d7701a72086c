package api

import (
	"compress/gzip"
	"io"
)

func gzipNewReader(r io.Reader) (io.Reader, error) { return gzip.NewReader(r) }
