package api

import (
	"context"
	"fmt"
	"time"
)

// Retention of finished commands (-command-retention): every minute the
// api deletes the commands that finished (succeeded, failed, expired,
// cancelled) longer ago than the retention, a bounded batch per
// transaction so that command writes never wait long behind it. A command
// that a running campaign device still names (in flight: offered,
// downloading, verifying, installing) is
// kept whatever its age: the campaign reads its outcome from it. So is
// the newest command of each device: the next one's seq is the highest
// kept plus one, and a device must never see a seq again.

const (
	// pruneEvery is how often the sweep prunes.
	pruneEvery = time.Minute
	// pruneBatch bounds the rows one pruning transaction deletes.
	pruneBatch = 1000
	// minRetention keeps a command long enough for every reader of its
	// outcome (a waiting caller, a campaign's tick, an operator's look).
	minRetention = time.Hour
)

// pruneCommands deletes the commands finished before now less the
// retention, and returns how many.
func (s *Server) pruneCommands(ctx context.Context, now time.Time) (int, error) {
	keep := s.cfg.Commands.Retention
	if keep <= 0 {
		return 0, nil
	}
	cutoff := now.Add(-keep).UnixMilli()
	total := 0
	for ctx.Err() == nil {
		var n int64
		err := s.db.write(ctx, func(t *tx) error {
			res, err := t.ExecContext(ctx, `DELETE FROM commands WHERE id IN (SELECT id FROM commands
 WHERE completed_at IS NOT NULL AND completed_at < $1 AND state IN ('succeeded', 'failed', 'expired', 'cancelled')
 AND id NOT IN (SELECT command_id FROM campaign_devices WHERE state IN `+inFlightStates+` AND command_id IS NOT NULL)
 AND seq < (SELECT MAX(n.seq) FROM commands n WHERE n.device_id = commands.device_id)
 LIMIT $2)`, cutoff, pruneBatch)
			if err != nil {
				return fmt.Errorf("prune commands: %w", err)
			}
			n, err = res.RowsAffected()
			return err
		})
		if err != nil {
			return total, err
		}
		total += int(n)
		s.metrics.commands.WithLabelValues("pruned").Add(float64(n))
		if n < pruneBatch {
			break
		}
	}
	return total, nil
}
