// Package grafana holds no code: this folder is drover's Grafana
// provisioning (an InfluxQL data source and the fleet dashboards, see
// README.md). Its test loads every dashboard and runs each of its queries,
// template variables substituted as Grafana would, against a real InfluxDB
// 1.8 holding points written by drover's own InfluxDB sink.
package grafana
