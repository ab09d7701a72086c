package daemon

import "os"

// FileChanged reports whether now, a fresh stat of a watched file, is not
// the file last read (last; nil when none was): another modification time or
// size, or another file altogether — a new one renamed over it, as atomic
// writers and Kubernetes ConfigMap updates do, possibly with the same size
// and a coarse modification time. The registry and the livefeed's clients
// file poll with it.
func FileChanged(last, now os.FileInfo) bool {
	return last == nil || !now.ModTime().Equal(last.ModTime()) || now.Size() != last.Size() ||
		!os.SameFile(now, last)
}
