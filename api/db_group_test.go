package api

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestWriteGroup: writes queued while one commit runs share the next
// transaction (one commit for many), yet each keeps its own outcome — one
// that fails (its own error, a constraint the database refuses, a panic)
// is rolled back alone, one whose caller left before its turn is not run —
// and every caller told nil finds its write committed.
func TestWriteGroup(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		db := openTestStore(t, b)
		var mu sync.Mutex
		var sizes []int
		db.groupSize = func(n int) { mu.Lock(); sizes = append(sizes, n); mu.Unlock() }
		// Every write in lane 0 (device ""): this test is about sharing a
		// transaction (TestCommandGroupsPostgres has several lanes).
		lane := db.lane("")
		if _, err := db.wdb.ExecContext(ctx, `CREATE TABLE group_test (k TEXT PRIMARY KEY)`); err != nil {
			t.Fatal(err)
		}
		insert := func(t *tx, k string) error {
			_, err := t.ExecContext(t.ctx, `INSERT INTO group_test (k) VALUES ($1)`, k)
			return err
		}

		const n = 40
		errOwn := errors.New("refused by the caller")
		gone, leave := context.WithCancel(ctx)
		leave()
		queued := make(chan struct{})
		outs := make([]error, n)
		var wg sync.WaitGroup
		// The first write holds its transaction open until every other
		// caller is queued behind it.
		wg.Go(func() {
			outs[0] = db.writeGroup(ctx, "", func(t *tx) error {
				<-queued
				return insert(t, "k0")
			})
		})
		waitFor(t, 10*time.Second, "the first write to lead", func() bool {
			lane.mu.Lock()
			defer lane.mu.Unlock()
			return lane.busy
		})
		for i := 1; i < n; i++ {
			c := ctx
			if i == 7 {
				c = gone
			}
			wg.Go(func() {
				outs[i] = db.writeGroup(c, "", func(t *tx) error {
					k := fmt.Sprintf("k%d", i)
					switch i {
					case 5:
						if err := insert(t, k); err != nil {
							return err
						}
						return errOwn // after writing: the write must go
					case 9:
						k = "k0" // a duplicate key: the database refuses it
					case 11:
						if err := insert(t, k); err != nil {
							return err
						}
						panic("a bug in one write")
					}
					return insert(t, k)
				})
			})
		}
		waitFor(t, 10*time.Second, "every write to queue", func() bool {
			lane.mu.Lock()
			defer lane.mu.Unlock()
			return len(lane.queue) == n-1
		})
		close(queued)
		wg.Wait()

		var want []string
		for i, err := range outs {
			switch i {
			case 5:
				if err != errOwn {
					t.Errorf("write 5: %v, want its own error", err)
				}
			case 7:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("write 7 (caller gone): %v, want context.Canceled", err)
				}
			case 9:
				if !isUniqueViolation(err) {
					t.Errorf("write 9 (duplicate key): %v, want a unique violation", err)
				}
			case 11:
				if err == nil || !strings.Contains(err.Error(), "panicked") {
					t.Errorf("write 11 (panics): %v, want its panic as its error", err)
				}
			default:
				if err != nil {
					t.Errorf("write %d: %v", i, err)
				}
				want = append(want, fmt.Sprintf("k%d", i))
			}
		}
		rows, err := db.rdb.QueryContext(ctx, `SELECT k FROM group_test`)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for rows.Next() {
			var k string
			if err := rows.Scan(&k); err != nil {
				t.Fatal(err)
			}
			got = append(got, k)
		}
		rows.Close()
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("committed %v, want %v", got, want)
		}
		if !slices.Equal(sizes, []int{1, n - 1}) {
			t.Errorf("groups of %v, want [1 %d]: the queued writes share one commit", sizes, n-1)
		}
	})
}
