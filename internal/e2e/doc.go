// Package e2e holds drover's multi-process tests: they build the real
// drover binary, start its components as separate processes on loopback
// ports, drive them with the device simulator, kill processes with SIGKILL,
// and check from the queues and stores that nothing acknowledged was lost.
// The package has no non-test code but this comment.
package e2e
