package api

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"
)

// What a start does for the data path of the same host: a follower key in
// a file (-follower-key-file), and devices created when missing
// (Config.Seed, drover all -simulate).

// followerOperatorName names the operator whose key -follower-key-file
// holds.
const followerOperatorName = "local followers (-follower-key-file)"

// ensureFollowerKey makes sure the follower key file holds a valid key of
// a follower operator: a key that still authenticates is kept; otherwise
// (no file, a key revoked or of another database) a key is created, for an
// operator created once for the purpose, and written to the file (mode
// 0600) before the transaction commits. Audited like any key creation.
func (s *Server) ensureFollowerKey(ctx context.Context) error {
	path := s.cfg.FollowerKeyFile
	if path == "" {
		return nil
	}
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		if keyID, secret, ok := parseAPIKey(strings.TrimSpace(string(b))); ok {
			p, _, err := s.lookupKey(ctx, keyID, secret, time.Now())
			if err != nil {
				return fmt.Errorf("api: follower key file: %w", err)
			}
			if p != nil && p.Role == RoleFollower {
				return nil
			}
		}
		s.log.Info("api: the key in the follower key file no longer authenticates; writing a new one", "file", path)
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("api: follower key file: %w", err)
	}
	a := actorInfo{actor: "drover-api", requestID: "follower-key-file"}
	err = s.db.write(ctx, func(t *tx) error {
		var opID string
		err := t.QueryRowContext(ctx, `SELECT id FROM operators WHERE name = $1 AND role = $2 AND disabled_at IS NULL ORDER BY id LIMIT 1`,
			followerOperatorName, RoleFollower).Scan(&opID)
		if errors.Is(err, sql.ErrNoRows) {
			op := Operator{ID: newID("op_"), Name: followerOperatorName, Role: RoleFollower, Fleets: []string{allFleets}, Version: t.next()}
			if err := insertOperator(t, op); err != nil {
				return err
			}
			if err := t.audit(a, change{action: "operator.create", objType: "operator", objID: op.ID, after: op, version: op.Version}); err != nil {
				return err
			}
			opID = op.ID
		} else if err != nil {
			return fmt.Errorf("find the follower operator: %w", err)
		}
		k, err := createKey(t, opID, "follower key file", 0)
		if err != nil {
			return err
		}
		view := k
		view.Key = ""
		if err := t.audit(a, change{action: "api_key.create", objType: "api_key", objID: k.ID, after: view}); err != nil {
			return err
		}
		// Written before the commit: no key exists that the file does not
		// hold.
		if err := writeSecretFile(path, k.Key+"\n"); err != nil {
			return fmt.Errorf("write follower key file: %w", err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("api: %w", err)
	}
	s.log.Info("api: wrote a follower key (mode 0600) for the frontends, routers and livefeeds of this host", "file", path)
	return nil
}

// seed creates the devices of Config.Seed that do not exist yet, with the
// fleets, classes and regions they name, as one audited import by the
// api itself. Devices that exist are left as they are: what an operator
// changed of a simulated device (suspended it, moved it) survives a
// restart.
func (s *Server) seed(ctx context.Context) error {
	if len(s.cfg.Seed) == 0 {
		return nil
	}
	p := newPrincipal("drover-api", "seed", "", RoleAdmin, []string{allFleets})
	r := (&http.Request{RemoteAddr: "local", Header: http.Header{}}).WithContext(context.WithValue(ctx, requestIDKey, "seed"))
	var res ImportResult
	err := s.db.write(ctx, func(t *tx) error {
		ids := make([]string, len(s.cfg.Seed))
		for i, row := range s.cfg.Seed {
			ids[i] = row.ID
		}
		existing, err := existingDevices(ctx, t, s.db.bulkPlaceholders, ids)
		if err != nil {
			return err
		}
		var rows []ImportRow
		for _, row := range s.cfg.Seed {
			if _, ok := existing[row.ID]; !ok {
				rows = append(rows, row)
			}
		}
		if len(rows) == 0 {
			return nil
		}
		var rowErrs []ImportError
		res, rowErrs, err = s.applyImport(t, r, p, rows, false, false, true)
		if err != nil {
			return err
		}
		if len(rowErrs) > 0 {
			return fmt.Errorf("seed: %d devices refused, the first: %s %s", len(rowErrs), rowErrs[0].ID, rowErrs[0].Message)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("api: %w", err)
	}
	if res.Created > 0 {
		s.log.Info("api: seed devices created", "created", res.Created, "of", len(s.cfg.Seed))
	}
	return nil
}
