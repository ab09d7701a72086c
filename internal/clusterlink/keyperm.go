package clusterlink

import (
	"os"
	"slices"
	"syscall"
)

// readableByOthers reports whether a key file may be read by users other
// than the process's: world-readable, or group-readable by a group the
// process is not in. A file whose group is the process's own is not: a
// Kubernetes Secret mounted with defaultMode 0400 into a pod with an
// fsGroup is 0440 root:fsGroup (the kubelet adds group read so that the
// non-root user can read it), and that group is the pod's user alone.
func readableByOthers(info os.FileInfo) bool {
	perm := info.Mode().Perm()
	if perm&0o007 != 0 {
		return true
	}
	if perm&0o070 == 0 {
		return false
	}
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return true
	}
	gid := int(st.Gid)
	if gid == os.Getegid() {
		return false
	}
	groups, err := os.Getgroups()
	return err != nil || !slices.Contains(groups, gid)
}
