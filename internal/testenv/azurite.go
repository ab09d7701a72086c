package testenv

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
)

// The storage emulator's well-known development account (the same in every
// Azurite and in the Azure docs): not a secret.
const (
	AzuriteAccountName = "devstoreaccount1"
	AzuriteAccountKey  = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

// azInstallHint is what a test says when the npm tools are missing.
const azInstallHint = "run scripts/install-azurite.sh (or make tools): it installs azurite and " +
	"@duckdb/node-api into .tools/azurite with npm"

// AzuriteServer is an Azurite Blob service started for one test, with a
// container created in it. It stops when the test ends.
type AzuriteServer struct {
	// BlobEndpoint is the account's Blob endpoint, path style:
	// http://127.0.0.1:PORT/devstoreaccount1.
	BlobEndpoint string
	// AccountName and AccountKey are the development account's shared key.
	AccountName, AccountKey string
	// ConnectionString authenticates as the development account.
	ConnectionString string
	// Container is the name of the container created at start, and
	// ContainerURL its URL (BlobEndpoint/Container).
	Container, ContainerURL string
	// Dir is where Azurite keeps its data.
	Dir string
}

// ContainerClient returns a client of the server's container, authenticated
// with the connection string.
func (s *AzuriteServer) ContainerClient(t testing.TB) *container.Client {
	t.Helper()
	c, err := container.NewClientFromConnectionString(s.ConnectionString, s.Container, nil)
	if err != nil {
		t.Fatalf("azurite: container client: %v", err)
	}
	return c
}

// Azurite starts azurite-blob on a free loopback port with its data in a
// temporary directory, waits until it answers, creates a container and
// returns the server. The server is stopped when the test ends.
//
// azurite-blob is looked for in $DROVER_AZURITE_BLOB, then in
// .tools/azurite/node_modules/.bin/ under the module root (where
// scripts/install-azurite.sh puts it), then on PATH. When it is missing the
// test fails if CI=true and is skipped otherwise, saying how to install it.
func Azurite(t testing.TB) *AzuriteServer {
	t.Helper()
	bin := azFindAzurite(t)
	if _, err := exec.LookPath("node"); err != nil { // azurite-blob is a node script
		azMissing(t, "node not found on PATH (Debian: apt-get install nodejs npm)")
	}
	dir := t.TempDir()
	var lastErr error
	// A free port can be taken by someone else between our probe and
	// Azurite's bind: try a few.
	for range 3 {
		s, err := azStart(t, bin, dir)
		if err == nil {
			return s
		}
		lastErr = err
	}
	t.Fatalf("azurite: %v", lastErr)
	return nil
}

// DuckDBNode returns the node binary and the directory of the
// @duckdb/node-api package that scripts/install-azurite.sh installs, for
// tests that check with DuckDB that the lake can be queried. When either is
// missing the test fails if CI=true and is skipped otherwise.
func DuckDBNode(t testing.TB) (node, module string) {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		azMissing(t, "node not found on PATH (Debian: apt-get install nodejs npm)")
	}
	root, err := azModuleRoot()
	if err != nil {
		t.Fatalf("duckdb: %v", err)
	}
	module = filepath.Join(root, ".tools", "azurite", "node_modules", "@duckdb", "node-api")
	if _, err := os.Stat(filepath.Join(module, "package.json")); err != nil {
		azMissing(t, "@duckdb/node-api not found in "+module)
	}
	return node, module
}

// RunDuckDB runs node with args (a DuckDB script and its arguments, from
// DuckDBNode's node and module) until ctx ends and returns what it printed;
// on failure it ends the test with the script's stderr.
func RunDuckDB(t testing.TB, ctx context.Context, node, module string, args ...string) []byte {
	t.Helper()
	cmd := exec.CommandContext(ctx, node, args...)
	cmd.Env = append(cmd.Environ(), "DUCKDB_NODE_API="+module)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("duckdb %s: %v\n%s", filepath.Base(args[0]), err, stderr.String())
	}
	return out
}

// azFindAzurite returns the azurite-blob to run, or ends the test.
func azFindAzurite(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("DROVER_AZURITE_BLOB"); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("azurite: DROVER_AZURITE_BLOB=%s: %v", p, err)
		}
		return p
	}
	if root, err := azModuleRoot(); err == nil {
		p := filepath.Join(root, ".tools", "azurite", "node_modules", ".bin", "azurite-blob")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("azurite-blob"); err == nil {
		return p
	}
	azMissing(t, "azurite-blob not found (.tools/azurite, $DROVER_AZURITE_BLOB, PATH)")
	return ""
}

var azSkipNotice sync.Map // message → struct{}: say each skip reason once per test binary

// azMissing ends a test that needs a tool that is not installed: a failure on
// CI (CI=true), where the real thing must be proven, and a loud skip
// elsewhere.
func azMissing(t testing.TB, what string) {
	t.Helper()
	msg := what + "; " + azInstallHint
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	if _, seen := azSkipNotice.LoadOrStore(msg, struct{}{}); !seen {
		fmt.Fprintf(os.Stderr, "SKIP (tests needing it are skipped): %s\n", msg)
	}
	t.Skip("SKIP: " + msg)
}

// azStart runs one attempt: start on a free port, wait until the container
// can be created.
func azStart(t testing.TB, bin, dir string) (*AzuriteServer, error) {
	t.Helper()
	port, err := freePort()
	if err != nil {
		return nil, fmt.Errorf("find a free port: %w", err)
	}
	var out azLimitedBuffer
	cmd := exec.Command(bin,
		"--blobHost", "127.0.0.1",
		"--blobPort", strconv.Itoa(port),
		"--location", dir,
		"--skipApiVersionCheck", // the Go SDK may be newer than the emulator
		"--loose",               // ignore headers the emulator does not know
		"--disableTelemetry",
		"--silent",
	)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}

	endpoint := fmt.Sprintf("http://127.0.0.1:%d/%s", port, AzuriteAccountName)
	s := &AzuriteServer{
		BlobEndpoint: endpoint,
		AccountName:  AzuriteAccountName,
		AccountKey:   AzuriteAccountKey,
		ConnectionString: fmt.Sprintf("DefaultEndpointsProtocol=http;AccountName=%s;AccountKey=%s;BlobEndpoint=%s;",
			AzuriteAccountName, AzuriteAccountKey, endpoint),
		Container: "lake",
		Dir:       dir,
	}
	s.ContainerURL = endpoint + "/" + s.Container
	c, err := container.NewClientFromConnectionString(s.ConnectionString, s.Container, nil)
	if err != nil {
		stop()
		return nil, fmt.Errorf("container client: %w", err)
	}

	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err = c.Create(ctx, nil)
		cancel()
		if err == nil || bloberror.HasCode(err, bloberror.ContainerAlreadyExists) {
			break
		}
		select {
		case <-exited:
			return nil, fmt.Errorf("azurite-blob exited before answering on port %d: %s", port, out.String())
		default:
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("azurite-blob on port %d did not answer within 30s (last: %v): %s", port, err, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Cleanup(stop)
	return s, nil
}

// azLimitedBuffer keeps the first 64 KiB of a process's output, for error
// messages, and is safe to write from the exec package's copy goroutines.
type azLimitedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *azLimitedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := 64<<10 - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (b *azLimitedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
