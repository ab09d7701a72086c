package api

import (
	"context"
)

// gaugeCampaigns sets drover_api_campaign_devices from the devices of the
// running and paused campaigns: the progress a dashboard shows (succeeded
// out of all, failures, what is in flight). One grouped count per
// -command-poll, on the read pool.
func (s *Server) gaugeCampaigns(ctx context.Context) {
	rows, err := s.db.rdb.QueryContext(ctx, `SELECT cd.state, COUNT(*) FROM campaign_devices cd
 JOIN campaigns k ON k.id = cd.campaign_id WHERE k.state IN ($1, $2) GROUP BY cd.state`, CampaignRunning, CampaignPaused)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("api: campaigns: count devices for the metric", "err", err)
		}
		return
	}
	defer rows.Close()
	counts := map[string]float64{}
	for rows.Next() {
		var st string
		var n int64
		if err := rows.Scan(&st, &n); err != nil {
			return
		}
		counts[st] = float64(n)
	}
	if rows.Err() != nil {
		return
	}
	for _, st := range campaignDeviceStates {
		s.metrics.campaignDevs.WithLabelValues(st).Set(counts[st])
	}
}
