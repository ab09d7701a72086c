// Package influx is the storage writer's InfluxDB sink: it writes each
// enriched reading as one point, through the v2 write API
// (/api/v2/write, served by InfluxDB 1.8+, 2.x and 3) with
// github.com/influxdata/influxdb-client-go/v2's blocking writer, one request
// per batch. It neither batches nor retries: the storage writer takes
// batches from its durable queue, retries transient errors and bisects
// permanent ones, and pops a batch only when Write returned nil.
//
// # Schema
//
// One measurement (Config.Measurement, "telemetry" by default):
//
//   - tags: device (the device id), fleet, class (the vehicle class) and
//     region, from the router's enrichment; an empty one is left out;
//   - fields: seq (integer); lag_ms and received_ms (integers: when the
//     frontend received the reading, and how long after the device took it);
//     lat and lon in degrees (floats); altitude_m, heading_deg, speed_kmh,
//     engine_temp_c, engine_rpm, fuel_level_pct, odometer_km,
//     battery_voltage_v, battery_current_a, pneumatic_pressure_kpa (floats);
//     satellites (integer); ignition (boolean); and each extra sensor value
//     as the float field x_<key>, the key unchanged (see [ExtraField]: a
//     key with characters outside [A-Za-z0-9_] needs double quotes in
//     InfluxQL), so that two keys are never one field;
//   - a value the reading does not carry is no field at all, never 0.
//
// Every tag value and field key is stored unchanged. Validation at the
// frontend refuses what line protocol cannot carry unchanged (a device id
// outside telemetry.ValidateDeviceID, a label outside
// telemetry.ValidateLabel, an extra key with a backslash or a control
// character, a non-finite value, seq above 2^63-1, time_ms outside
// [telemetry.MinTimeMs, telemetry.MaxTimeMs]), so such a record can only
// come from an older drover: a tag value that would have to change fails
// the record for good (it is dead-lettered, never written under a changed
// id, where it could meet another device's series), and an extra value
// that cannot be carried is left out and counted in
// drover_influx_fields_dropped_total.
//
// Field types never change, so that the sink cannot cause a field type
// conflict; one can still happen if something else wrote the same field
// with another type, and InfluxDB then refuses the point for good.
//
// # Idempotence: the timestamp carries the sequence
//
// A point is identified by its measurement, tags and timestamp, and writing
// the same identity again overwrites the fields. The timestamp is the
// device's time with nanosecond precision:
//
//	timestamp (ns) = time_ms × 1,000,000 + (seq mod 1,000,000)
//
// So a reading delivered twice (same device and seq, hence same time and
// tags) lands on the same point and overwrites itself, and two different readings of one device
// taken in the same millisecond have different sequence numbers and so
// different points: neither is lost. Only readings whose sequences differ by
// a multiple of a million and share a millisecond would collide, which a
// device cannot produce. Dashboards never see the sub-millisecond part: they
// group by intervals of seconds or more. Whoever queries raw points should
// read seq from its field, not from the timestamp.
//
// A re-delivery only overwrites if the tags are the same. The router
// enriches when it publishes: if a device's registry entry (fleet, class,
// region) changes between two deliveries of one reading, the second lands in
// the new series and the reading has two points, one per series. Queries that
// must count exactly across such a change should count distinct seq per
// device.
//
// # Errors
//
// Write returns nil only when InfluxDB answered 204: every point is stored
// (InfluxDB 1.8 answers after appending to its WAL, fsynced by default).
// Errors are classified for the writer:
//
//   - permanent ([sink.Permanent]): HTTP 400 (a field type conflict, a
//     point outside the retention policy, a "partial write"), 413 (batch too
//     large), other 4xx about the request, and records that cannot be
//     encoded. On a partial write InfluxDB stored the other points; the
//     writer bisects the batch and rewrites halves, which is idempotent;
//   - transient: 5xx, 429, 408, timeouts (Config.Timeout per request),
//     refused or broken connections;
//   - transient too, though InfluxDB said 4xx: 401, 403 and 404 (bad
//     credentials, missing database), the 500 of a missing retention
//     policy, and a 400 for a series limit of InfluxDB's own configuration
//     (max-values-per-tag, whose default of 100,000 is below a large
//     fleet's device count, and max-series-per-database). They are not the records' fault, and dead-lettering
//     everything while an operator fixes the configuration would lose
//     data. They are wrapped with [sink.Misconfigured] and a sentence
//     saying what to do, counted as result="config", and reported by
//     [Sink.State] (the writer's /readyz) until a write works; the writer
//     logs the outage once. With Config.CreateDatabase a missing database
//     is created ([Sink.Check] at start, and on a write that finds it
//     missing);
//   - the caller's context ending: its error, wrapped.
//
// Errors from an HTTP answer wrap an [*HTTPError] carrying the status and
// InfluxDB's reason.
//
// # Metrics
//
// drover_influx_points_written_total, drover_influx_write_requests_total
// by result (ok, permanent, transient, config, canceled),
// drover_influx_write_duration_seconds, drover_influx_write_bytes_total,
// drover_influx_fields_dropped_total, drover_influx_database_missing and
// drover_influx_databases_created_total.
//
// A point older than the retention policy's duration is refused for good
// ("points beyond retention policy"), and dead-lettered: a finite retention
// policy must keep more than the frontend's oldest accepted reading (30
// days by default) plus the longest sink outage to ride out.
//
// # Against InfluxDB 2.x and 3
//
// The same requests work: Config.Database is the bucket (or the database of
// a DBRP mapping) and Config.Token an API token. The database must exist
// (Config.CreateDatabase runs InfluxQL CREATE DATABASE, which only 1.x
// serves); with InfluxDB 1.8: influx -execute 'CREATE DATABASE drover', or
// curl -XPOST localhost:8086/query --data-urlencode 'q=CREATE DATABASE drover'.
// docs/influxdb.md is the schema and setup for operators and Grafana users.
package influx
