//go:build !linux

package testenv

import "syscall"

// sysProcAttr: only Linux can tie influxd's life to the test binary's.
func sysProcAttr() *syscall.SysProcAttr { return nil }
