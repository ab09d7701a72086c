package main

import (
	"flag"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/alerts"
)

func setupAlerts(fs *flag.FlagSet) buildFunc {
	cfg := alerts.DefaultConfig()
	cfg.RegisterFlags(fs)
	return func(logger *slog.Logger, reg prometheus.Registerer) ([]unit, error) {
		e, err := alerts.New(cfg, logger, reg)
		if err != nil {
			return nil, err
		}
		return []unit{{name: "alerts", run: e.Run, ready: e.Ready}}, nil
	}
}

const alertsHelp = `
A durable subscriber of every router's store lane (list its -name in the
routers' -subscribers): it evaluates geofence, driving and vehicle-health
rules in device time and delivers alerts to webhooks, InfluxDB
(-influx-url), the lake's alerts table (-lake-dir), the control plane
(-api-url) and livefeeds (-alert-pub). The rule set comes from the API
(-api-url with a follower's key) or from a file (-rules). docs/alerts.md.`
