// Package e2e holds drover's multi-process tests: they build the real
// drover binary, start its components as separate processes on loopback
// ports, drive them with the device simulator, kill processes with SIGKILL,
// and check from the queues and stores that nothing acknowledged was lost.
// The package has no non-test code but this comment.
//
// Most tests here wait: for simulated devices sending in real time, for
// processes to restart, for queues to drain. Those that assert no timing
// call t.Parallel, so that go test runs them -parallel at a time once the
// others are done (make test runs this package in a go test of its own,
// beside the rest of the module, with -parallel 3: see the Makefile's
// test-unit); so do TestStorageFaults, whose 5 s limit on a pause was set
// for a loaded machine (gaps of about a second seen at a load of 20 on 2
// cores, running beside the others), and the follow tests, whose bound on
// propagation (propagationBound, 10 s) allows for one
// (TestFollowPostgresOutage stops its PostgreSQL server, so it has one of
// its own: testenv.PostgresOwn). The others run alone in this package,
// first: TestStampedeAfterKill9 (2,000 TLS devices in this process: a load
// of its own) and those that assert a latency a busy machine stretches past
// its limit (TestAlertsEndToEnd's silence raised by the engine's clock within
// 3 s of its 8 s, judged against readings of pacers in this process;
// TestSinkOutageBackPressure's live updates while the fan-out is blocked, a
// window that shrank from 5 s to 1.5 s, with no update in it, when it ran
// beside the others). Each process a test starts carries the test's own
// cluster key (clusterKeyFile), so that tests running side by side, whose
// components share names (uid), never reach each other's processes.
// TestChaos runs on its own (make test-chaos).
package e2e
