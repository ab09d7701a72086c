package api

import (
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// catalog is one of the three small tables devices refer to: fleets (the
// tenants), vehicle classes and regions. They share one shape and one
// implementation; only fleets are scoped (a key sees its own fleets), while
// classes and regions are global vocabularies every key may read.
type catalog struct {
	table, kind string // "fleets", "fleet"
	scoped      bool
	deviceCol   string // the devices column that refers to it
}

var (
	fleets  = catalog{table: "fleets", kind: "fleet", scoped: true, deviceCol: "fleet"}
	classes = catalog{table: "classes", kind: "class", deviceCol: "class"}
	regions = catalog{table: "regions", kind: "region", deviceCol: "region"}
)

// CatalogItem is a fleet, a class or a region.
type CatalogItem struct {
	ID          string    `json:"id"`
	Name        string    `json:"name"`
	Description string    `json:"description"`
	Version     int64     `json:"version"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
}

func (c catalog) visible(p *principal, id string) bool { return !c.scoped || p.sees(id) }

func (c catalog) load(r *http.Request, q querier, p *principal, id string) (CatalogItem, error) {
	var it CatalogItem
	var created, updated int64
	err := q.QueryRowContext(r.Context(), `SELECT id, name, description, version, created_at, updated_at FROM `+c.table+` WHERE id = $1`, id).
		Scan(&it.ID, &it.Name, &it.Description, &it.Version, &created, &updated)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && !c.visible(p, id)) {
		return it, errNotFound(c.kind, id)
	}
	if err != nil {
		return it, fmt.Errorf("read %s %s: %w", c.kind, id, err)
	}
	it.CreatedAt, it.UpdatedAt = msTime(created), msTime(updated)
	return it, nil
}

func (s *Server) catalogList(c catalog) func(http.ResponseWriter, *http.Request, *principal) error {
	return func(w http.ResponseWriter, r *http.Request, p *principal) error {
		pg, err := parsePage(r)
		if err != nil {
			return err
		}
		var qa queryArgs
		if pg.cursor != "" {
			qa.add("id > ?", pg.cursor)
		}
		if fl := p.scopeFleets(); c.scoped && fl != nil {
			qa.in("id", fl)
		}
		rows, err := s.db.rdb.QueryContext(r.Context(), `SELECT id, name, description, version, created_at, updated_at FROM `+
			c.table+qa.clause()+fmt.Sprintf(` ORDER BY id LIMIT %d`, pg.limit+1), qa.args...)
		if err != nil {
			return fmt.Errorf("list %s: %w", c.table, err)
		}
		defer rows.Close()
		var out []CatalogItem
		for rows.Next() {
			var it CatalogItem
			var created, updated int64
			if err := rows.Scan(&it.ID, &it.Name, &it.Description, &it.Version, &created, &updated); err != nil {
				return fmt.Errorf("list %s: %w", c.table, err)
			}
			it.CreatedAt, it.UpdatedAt = msTime(created), msTime(updated)
			out = append(out, it)
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("list %s: %w", c.table, err)
		}
		writeJSON(w, http.StatusOK, pageOf(out, pg.limit, func(it CatalogItem) string { return it.ID }))
		return nil
	}
}

func (s *Server) catalogGet(c catalog) func(http.ResponseWriter, *http.Request, *principal) error {
	return func(w http.ResponseWriter, r *http.Request, p *principal) error {
		it, err := c.load(r, s.db.rdb, p, r.PathValue("id"))
		if err != nil {
			return err
		}
		return writeObject(w, http.StatusOK, it.Version, it)
	}
}

type catalogInput struct {
	ID          string  `json:"id"`
	Name        *string `json:"name"`
	Description *string `json:"description"`
}

func (in catalogInput) validate(kind string) error {
	if in.Name != nil {
		if err := validateName("name", *in.Name); err != nil {
			return err
		}
	}
	if in.Description != nil && len(*in.Description) > 4096 {
		return errInvalid("description", "description: over 4096 bytes")
	}
	return nil
}

func (s *Server) catalogCreate(c catalog) func(http.ResponseWriter, *http.Request, *principal) error {
	return func(w http.ResponseWriter, r *http.Request, p *principal) error {
		var in catalogInput
		if err := decodeJSON(r, &in); err != nil {
			return err
		}
		if !refIDRE.MatchString(in.ID) {
			return errInvalid("id", "%s id %q: want 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit", c.kind, in.ID)
		}
		if err := in.validate(c.kind); err != nil {
			return err
		}
		it := CatalogItem{ID: in.ID, Name: in.ID}
		if in.Name != nil && *in.Name != "" {
			it.Name = *in.Name
		}
		if in.Description != nil {
			it.Description = *in.Description
		}
		err := s.db.write(r.Context(), func(t *tx) error {
			it.Version = t.next()
			it.CreatedAt, it.UpdatedAt = msTime(t.ms()), msTime(t.ms())
			if _, err := t.ExecContext(t.ctx, `INSERT INTO `+c.table+` (id, name, description, version, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $5)`, it.ID, it.Name, it.Description, it.Version, t.ms()); err != nil {
				if isUniqueViolation(err) {
					return errConflict("%s %q already exists", c.kind, it.ID)
				}
				return fmt.Errorf("create %s: %w", c.kind, err)
			}
			return t.audit(actorOf(r, p), change{action: c.kind + ".create", objType: c.kind, objID: it.ID,
				fleet: c.fleetOf(it.ID), after: it, version: it.Version})
		})
		if err != nil {
			return err
		}
		w.Header().Set("Location", "/v1/"+c.table+"/"+it.ID)
		return writeObject(w, http.StatusCreated, it.Version, it)
	}
}

// fleetOf is the fleet an audit entry about item id belongs to.
func (c catalog) fleetOf(id string) string {
	if c.scoped {
		return id
	}
	return ""
}

func (s *Server) catalogUpdate(c catalog) func(http.ResponseWriter, *http.Request, *principal) error {
	return func(w http.ResponseWriter, r *http.Request, p *principal) error {
		var in catalogInput
		if err := decodeJSON(r, &in); err != nil {
			return err
		}
		if in.ID != "" {
			return errInvalid("id", "id cannot change (devices refer to it)")
		}
		if err := in.validate(c.kind); err != nil {
			return err
		}
		id := r.PathValue("id")
		var after CatalogItem
		err := s.db.write(r.Context(), func(t *tx) error {
			before, err := c.load(r, t, p, id)
			if err != nil {
				return err
			}
			if err := checkIfMatch(r, before.Version); err != nil {
				return err
			}
			after = before
			if in.Name != nil && *in.Name != "" {
				after.Name = *in.Name
			}
			if in.Description != nil {
				after.Description = *in.Description
			}
			after.Version, after.UpdatedAt = t.next(), msTime(t.ms())
			if _, err := t.ExecContext(t.ctx, `UPDATE `+c.table+` SET name = $1, description = $2, version = $3, updated_at = $4 WHERE id = $5`,
				after.Name, after.Description, after.Version, t.ms(), id); err != nil {
				return fmt.Errorf("update %s %s: %w", c.kind, id, err)
			}
			return t.audit(actorOf(r, p), change{action: c.kind + ".update", objType: c.kind, objID: id, fleet: c.fleetOf(id),
				before: before, after: after, version: after.Version})
		})
		if err != nil {
			return err
		}
		return writeObject(w, http.StatusOK, after.Version, after)
	}
}

func (s *Server) catalogDelete(c catalog) func(http.ResponseWriter, *http.Request, *principal) error {
	return func(w http.ResponseWriter, r *http.Request, p *principal) error {
		id := r.PathValue("id")
		err := s.db.write(r.Context(), func(t *tx) error {
			before, err := c.load(r, t, p, id)
			if err != nil {
				return err
			}
			if err := checkIfMatch(r, before.Version); err != nil {
				return err
			}
			var n int
			if err := t.QueryRowContext(t.ctx, `SELECT COUNT(*) FROM devices WHERE `+c.deviceCol+` = $1`, id).Scan(&n); err != nil {
				return fmt.Errorf("delete %s %s: %w", c.kind, id, err)
			}
			if n > 0 {
				return errConflict("%s %q has %d devices: move or delete them first", c.kind, id, n)
			}
			if _, err := t.ExecContext(t.ctx, `DELETE FROM `+c.table+` WHERE id = $1`, id); err != nil {
				if isForeignKeyViolation(err) {
					return errConflict("%s %q is still in use", c.kind, id)
				}
				return fmt.Errorf("delete %s %s: %w", c.kind, id, err)
			}
			return t.audit(actorOf(r, p), change{action: c.kind + ".delete", objType: c.kind, objID: id,
				fleetBefore: c.fleetOf(id), before: before})
		})
		if err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
}
