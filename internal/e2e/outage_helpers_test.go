package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// liveSeen records the updates a live client receives: when each arrived
// and the newest device time (time_ms) among its vehicles.
type liveSeen struct {
	mu      sync.Mutex
	at      []time.Time
	newest  []int64
	updates int
}

// newestBetween returns the newest device time received in updates that
// arrived in [from, to], and how many such updates there were.
func (l *liveSeen) newestBetween(from, to time.Time) (time.Time, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var best int64
	n := 0
	for i, at := range l.at {
		if at.Before(from) || at.After(to) {
			continue
		}
		n++
		best = max(best, l.newest[i])
	}
	return time.UnixMilli(best), n
}

// longestGap is the longest time in [from, to] without an update.
func (l *liveSeen) longestGap(from, to time.Time) time.Duration {
	l.mu.Lock()
	k := &ticker{times: append([]time.Time(nil), l.at...)}
	l.mu.Unlock()
	return k.longestGap(from, to)
}

// watchLiveTimes follows the livefeed at url as a client subscribed to
// everything, reconnecting until ctx ends.
func watchLiveTimes(ctx context.Context, t *testing.T, url, token string) *liveSeen {
	t.Helper()
	l := &liveSeen{}
	connect := func() (*websocket.Conn, error) {
		h := http.Header{"Authorization": {"Bearer " + token}}
		c, resp, err := websocket.DefaultDialer.DialContext(ctx, url, h)
		if err != nil {
			if resp != nil {
				return nil, fmt.Errorf("%w (HTTP %s)", err, resp.Status)
			}
			return nil, err
		}
		if err := c.WriteMessage(websocket.TextMessage, []byte(`{"type":"subscribe","id":"outage"}`)); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
	c, err := connect()
	if err != nil {
		t.Fatalf("livefeed client: %v", err)
	}
	go func() {
		for ctx.Err() == nil {
			if c == nil {
				if c, err = connect(); err != nil {
					time.Sleep(100 * time.Millisecond)
					continue
				}
			}
			stop := context.AfterFunc(ctx, func() { c.Close() })
			for {
				_, b, err := c.ReadMessage()
				if err != nil {
					break
				}
				var m struct {
					Type     string `json:"type"`
					Vehicles []struct {
						TimeMs int64 `json:"time_ms"`
					} `json:"vehicles"`
				}
				if json.Unmarshal(b, &m) != nil || m.Type != "update" || len(m.Vehicles) == 0 {
					continue
				}
				var newest int64
				for _, v := range m.Vehicles {
					newest = max(newest, v.TimeMs)
				}
				l.mu.Lock()
				l.at = append(l.at, time.Now())
				l.newest = append(l.newest, newest)
				l.updates++
				l.mu.Unlock()
			}
			stop()
			c.Close()
			c = nil
		}
	}()
	return l
}

// stages records when each of a set of conditions on the pipeline first
// held, polling them every 100 ms until ctx ends.
type stages struct {
	mu    sync.Mutex
	first map[string]time.Time
	order []string
}

// watchStages polls conds (by name) and records the first time each
// holds.
func watchStages(ctx context.Context, conds map[string]func() bool) *stages {
	s := &stages{first: map[string]time.Time{}}
	names := make([]string, 0, len(conds))
	for n := range conds {
		names = append(names, n)
	}
	sort.Strings(names)
	go func() {
		tk := time.NewTicker(100 * time.Millisecond)
		defer tk.Stop()
		for {
			for _, n := range names {
				s.mu.Lock()
				_, seen := s.first[n]
				s.mu.Unlock()
				if seen || !conds[n]() {
					continue
				}
				s.mu.Lock()
				s.first[n] = time.Now()
				s.order = append(s.order, n)
				s.mu.Unlock()
			}
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
			}
		}
	}()
	return s
}

// at returns when the condition name first held, and whether it has.
func (s *stages) at(name string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	at, ok := s.first[name]
	return at, ok
}

// report lists the conditions seen, in order, with their time since start.
func (s *stages) report(start time.Time) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	for _, n := range s.order {
		fmt.Fprintf(&b, "\n  %8v  %s", s.first[n].Sub(start).Round(time.Millisecond), n)
	}
	return b.String()
}
