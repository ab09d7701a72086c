package api

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
)

// bootstrap makes a first start usable: when no operator exists at all, it
// creates an admin of every fleet with one key and writes the key to the
// bootstrap key file (mode 0600), logging the file's path and never the
// key. The check and the creation are one write transaction, which holds
// the feed lock: two replicas starting together on one PostgreSQL create
// one admin, not two.
func (s *Server) bootstrap(ctx context.Context) error {
	path := s.cfg.bootstrapKeyFile()
	created := false
	err := s.db.write(ctx, func(t *tx) error {
		var n int
		if err := t.QueryRowContext(ctx, `SELECT COUNT(*) FROM operators`).Scan(&n); err != nil {
			return fmt.Errorf("bootstrap: %w", err)
		}
		if n > 0 {
			return nil
		}
		op := Operator{ID: newID("op_"), Name: "bootstrap admin", Role: RoleAdmin, Fleets: []string{allFleets}, Version: t.next()}
		if err := insertOperator(t, op); err != nil {
			return fmt.Errorf("bootstrap: %w", err)
		}
		k, err := createKey(t, op.ID, "bootstrap", 0)
		if err != nil {
			return fmt.Errorf("bootstrap: %w", err)
		}
		a := actorInfo{actor: "drover-api", keyID: "", requestID: "bootstrap"}
		if err := t.audit(a, change{action: "operator.create", objType: "operator", objID: op.ID, after: op, version: op.Version}); err != nil {
			return err
		}
		// Written before the commit: if the file cannot be written, no
		// admin exists that nobody holds a key of.
		if err := writeSecretFile(path, k.Key+"\n"); err != nil {
			return fmt.Errorf("bootstrap: write admin key: %w", err)
		}
		created = true
		return nil
	})
	if err != nil {
		return fmt.Errorf("api: %w", err)
	}
	if created {
		s.log.Info("api: no operator existed: created an admin of every fleet; its API key is in the file (mode 0600). "+
			"Use it to create named operators and keys, then delete the file", "file", path)
	}
	return nil
}

// writeSecretFile writes data to path with mode 0600, atomically (temp
// file, fsync, rename, fsync of the directory).
func writeSecretFile(path, data string) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".key-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.WriteString(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
