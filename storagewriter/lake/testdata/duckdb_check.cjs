// duckdb_check.cjs LAKE_DIR: what an analyst's DuckDB sees of a local lake.
// Prints one JSON object: row counts (raw and deduplicated two ways), the
// hive partitions, the column types, and a sample of values.
// DUCKDB_NODE_API names the @duckdb/node-api package folder.
'use strict';
const duckdb = require(process.env.DUCKDB_NODE_API);

async function main() {
  const dir = process.argv[2];
  const instance = await duckdb.DuckDBInstance.create(':memory:');
  const conn = await instance.connect();
  const q = async (sql) => (await conn.runAndReadAll(sql)).getRowObjectsJson();
  await conn.run(`CREATE VIEW lake AS SELECT * FROM read_parquet('${dir}/**/*.parquet', hive_partitioning = true)`);
  const out = {};
  out.total = Number((await q('SELECT count(*) AS n FROM lake'))[0].n);
  out.distinct_on = Number((await q(
    'SELECT count(*) AS n FROM (SELECT DISTINCT ON (device_id, seq) * FROM lake ORDER BY device_id, seq, received_ms)'))[0].n);
  out.qualify = Number((await q(
    'SELECT count(*) AS n FROM (SELECT * FROM lake QUALIFY row_number() OVER (PARTITION BY device_id, seq ORDER BY received_ms) = 1)'))[0].n);
  out.partitions = (await q('SELECT DISTINCT CAST(date AS VARCHAR) AS date, hour FROM lake ORDER BY 1, 2'))
    .map((r) => `${r.date}/${String(r.hour).padStart(2, '0')}`);
  out.types = Object.fromEntries((await q('DESCRIBE lake')).map((r) => [r.column_name, r.column_type]));
  // hour=07 is a string to DuckDB's type detection (the leading zero);
  // hive_types makes it a number, as docs/lake.md says.
  out.typed_hours = (await q(
    `SELECT DISTINCT hour FROM read_parquet('${dir}/**/*.parquet', hive_partitioning = true, ` +
    `hive_types = {'date': DATE, 'hour': INTEGER}) WHERE date = DATE '2025-03-14' AND hour BETWEEN 8 AND 9 ORDER BY 1`)).map((r) => r.hour);
  out.with_oil = Number((await q(
    "SELECT count(*) AS n FROM lake WHERE extra['oil_pressure_kpa'] IS NOT NULL"))[0].n);
  out.sample = (await q(
    "SELECT device_id, seq, strftime(time AT TIME ZONE 'UTC', '%Y-%m-%dT%H:%M:%S.%g') AS time, lat, lon, extra['cabin_temp_c'] AS cabin FROM lake " +
    "WHERE device_id = 'dev-0001' ORDER BY seq LIMIT 1"))[0];
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((err) => {
  process.stderr.write(String(err && err.stack || err) + '\n');
  process.exit(1);
});
