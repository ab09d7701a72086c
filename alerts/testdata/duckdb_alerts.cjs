// duckdb_alerts.cjs DIR: what an analyst's DuckDB sees of the lake's alerts
// table in DIR, with the query docs/alerts.md gives. Prints one JSON object:
// rows, rows deduplicated by event_id, the hive partitions, column types.
// DUCKDB_NODE_API names the @duckdb/node-api package folder.
'use strict';
const duckdb = require(process.env.DUCKDB_NODE_API);

async function main() {
  const dir = process.argv[2];
  const instance = await duckdb.DuckDBInstance.create(':memory:');
  const conn = await instance.connect();
  const q = async (sql) => (await conn.runAndReadAll(sql)).getRowObjectsJson();
  await conn.run(`CREATE VIEW alerts AS SELECT * FROM read_parquet('${dir}/**/*.parquet', hive_partitioning = true)`);
  const out = {};
  out.total = Number((await q('SELECT count(*) AS n FROM alerts'))[0].n);
  out.distinct = Number((await q(
    'SELECT count(*) AS n FROM (SELECT DISTINCT ON (event_id) * FROM alerts ORDER BY event_id, "at")'))[0].n);
  out.partitions = (await q('SELECT DISTINCT CAST(date AS VARCHAR) AS date, hour FROM alerts ORDER BY 1, 2'))
    .map((r) => `${r.date}/${String(r.hour).padStart(2, '0')}`);
  out.types = Object.fromEntries((await q('DESCRIBE alerts')).map((r) => [r.column_name, r.column_type]));
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((err) => {
  process.stderr.write(String(err && err.stack || err) + '\n');
  process.exit(1);
});
