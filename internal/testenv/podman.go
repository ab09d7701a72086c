package testenv

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// podmanInstallHint is what a test says when podman is missing.
const podmanInstallHint = "run scripts/install-podman.sh (or make tools): it installs Debian's podman with the runc runtime and netavark"

// Podman runs podman for a test with drover's containers.conf
// (scripts/containers.conf: the runc runtime and ulimits within this
// machine's limits), the way `make image` does.
type Podman struct {
	// Bin is the podman binary.
	Bin string
	// Root is the root of drover's repository (scripts/, k8s/,
	// Containerfile).
	Root string
	env  []string
}

// FindPodman returns podman, checked to answer `podman info` with
// drover's containers.conf. Without it, the test fails when $CI is "true"
// and is skipped otherwise, saying how to install it.
func FindPodman(t testing.TB) *Podman {
	t.Helper()
	root, err := ModuleRoot()
	if err != nil {
		t.Fatalf("testenv: podman: %v", err)
	}
	bin, err := exec.LookPath("podman")
	if err != nil {
		missingTool(t, "podman not found on PATH", podmanInstallHint)
	}
	if _, err := exec.LookPath("runc"); err != nil {
		missingTool(t, "runc not found on PATH (podman's default runtime, crun, fails on this kind of machine)", podmanInstallHint)
	}
	p := &Podman{Bin: bin, Root: root,
		env: append(os.Environ(), "CONTAINERS_CONF="+filepath.Join(root, "scripts", "containers.conf"))}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := p.Command(ctx, "info", "--format", "{{.Host.OCIRuntime.Name}}").CombinedOutput(); err != nil {
		t.Fatalf("testenv: podman info: %v\n%s", err, out)
	} else if rt := strings.TrimSpace(string(out)); rt != "runc" {
		t.Fatalf("testenv: podman runs containers with %q, not runc: is scripts/containers.conf used?", rt)
	}
	return p
}

// Command returns podman with args, under drover's containers.conf.
func (p *Podman) Command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, p.Bin, args...)
	cmd.Env = p.env
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// Run runs podman with args and returns its standard output, trimmed; it
// fails the test if podman fails.
func (p *Podman) Run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := p.Try(args...)
	if err != nil {
		t.Fatalf("podman %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// Try runs podman with args (within 5 minutes) and returns its standard
// output, trimmed, or an error with its standard error.
func (p *Podman) Try(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := p.Command(ctx, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return strings.TrimSpace(stdout.String()), fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// BuildImage builds drover's image with scripts/build-image.sh, tagged
// image, stamped with version and commit, and returns the build's report
// (its standard error: the sizes). The image is removed when the test
// ends unless keep is set (an image shared by several tests).
func (p *Podman) BuildImage(t testing.TB, image, version, commit string, keep bool) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(p.Root, "scripts", "build-image.sh"))
	cmd.Dir = p.Root
	cmd.Env = append(p.env, "IMAGE="+image, "VERSION="+version, "COMMIT="+commit, "ENGINE="+p.Bin,
		"IMAGE_CONTEXT="+t.TempDir())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if out, err := cmd.Output(); err != nil {
		t.Fatalf("scripts/build-image.sh: %v\n%s%s", err, out, stderr.String())
	}
	if !keep {
		t.Cleanup(func() { p.RemoveImage(image) })
	}
	return stderr.String()
}

// RemoveImage removes an image and the :latest tag the build gave it, if
// no container uses them; errors are ignored (cleanup).
func (p *Podman) RemoveImage(image string) {
	_, _ = p.Try("rmi", "--force", image)
	_, _ = p.Try("rmi", strings.TrimSuffix(image, ":"+imageTag(image))+":latest")
}

func imageTag(image string) string {
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		return image[i+1:]
	}
	return "latest"
}

var toolSkipNotice sync.Map // message → struct{}

// missingTool ends a test that needs a tool that is not installed: a
// failure on CI (CI=true), where the real thing must be proven, and a loud
// skip elsewhere.
func missingTool(t testing.TB, what, hint string) {
	t.Helper()
	msg := what + "; " + hint
	if os.Getenv("CI") == "true" {
		t.Fatalf("testenv: %s (CI=true: not skipping)", msg)
	}
	if _, seen := toolSkipNotice.LoadOrStore(msg, struct{}{}); !seen {
		fmt.Fprintf(os.Stderr, "\n*** testenv: SKIPPING tests that need it: %s ***\n\n", msg)
	}
	t.Skip("SKIPPED: " + msg)
}
