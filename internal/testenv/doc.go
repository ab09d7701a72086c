// Package testenv starts the real services drover's tests need, on loopback
// with random ports, and stops them when the test ends. It is for tests only.
//
// [InfluxD] starts an InfluxDB 1.8.10 built by scripts/install-influxd.sh
// (into .tools/bin at the module root, or the binary named by $DROVER_INFLUXD).
// When it is missing, a test fails if $CI is "true" and is skipped otherwise,
// never quietly: the skip names the install script and is also printed on
// standard error, verbose or not.
//
// [Postgres] starts a private PostgreSQL server per test binary (Debian's
// postgresql package, installed by scripts/install-postgres.sh): initdb and
// postgres in a temp dir on a random loopback port, as the postgres user
// when the tests run as root; [PG.NewDatabase] gives each test its own
// database. Packages that use it call [StopPostgres] from TestMain. A test
// that stops its server while others run beside it takes one of its own,
// [PostgresOwn]. Missing PostgreSQL is handled like missing influxd.
//
// [Azurite] starts the Azure Blob Storage emulator for the lake's tests, and
// [DuckDBNode] finds the DuckDB that reads the lake back. [Chromium] finds
// the browser of the live map's tests (internal/browsertest, a module of its
// own so that its browser driver stays out of drover's go.mod).
//
// [FindPodman] finds Debian's podman (scripts/install-podman.sh) and runs
// it under drover's containers.conf (runc, ulimits within this machine's
// limits); [Podman.BuildImage] builds drover's image as `make image` does.
// Missing podman is handled like missing influxd. [DNS] is a small
// authoritative DNS server whose A and AAAA records a test changes while
// processes resolve them through -dns-server: the stand-in for a cluster's
// DNS in the tests of dns+tcp:// endpoint lists.
package testenv
