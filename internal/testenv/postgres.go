package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// postgresInstallHint says how to get PostgreSQL; skips and failures quote it.
const postgresInstallHint = "run scripts/install-postgres.sh (Debian's postgresql package) or set DROVER_PG_BIN to " +
	"a directory holding initdb and postgres"

// PG is a private PostgreSQL server started by a test binary: loopback, a
// random port, its data in a temporary directory, run as an unprivileged
// user when the tests run as root (PostgreSQL refuses root).
type PG struct {
	// AdminURL connects as the superuser to the postgres database.
	AdminURL string
	// Dir holds the data directory and the server's log.
	Dir string

	bin      string
	port     int
	user     string
	password string
	cred     *syscall.Credential

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
	dbs     atomic.Int64
}

var (
	pgOnce   sync.Once
	pgShared *PG
	pgErr    error
	pgMissed error

	pgSkipWarning sync.Once
)

// Postgres returns the test binary's PostgreSQL server, starting it on
// first use (initdb and start take a few seconds; every test then gets a
// database of its own with [PG.NewDatabase]). Call [StopPostgres] from
// TestMain after m.Run; the server also dies with the test binary, even
// on kill -9.
//
// Without PostgreSQL, Postgres fails the test when $CI is "true" and skips
// it otherwise, saying how to install it.
func Postgres(t testing.TB) *PG {
	t.Helper()
	pgOnce.Do(func() {
		bin, err := PostgresBinDir()
		if err != nil {
			pgMissed = err
			return
		}
		pgShared, pgErr = startPostgres(bin)
	})
	if pgMissed != nil {
		missing(t, "PostgreSQL", pgMissed, postgresInstallHint)
	}
	if pgErr != nil {
		t.Fatalf("testenv: start postgres: %v", pgErr)
	}
	return pgShared
}

// StopPostgres stops the server [Postgres] started, if any, and removes
// its directory.
func StopPostgres() {
	if pgShared != nil {
		pgShared.Stop()
		_ = os.RemoveAll(pgShared.Dir)
	}
}

// PostgresBinDir returns the directory of initdb and postgres:
// $DROVER_PG_BIN if set, else the newest /usr/lib/postgresql/*/bin (where
// Debian installs them), else the directory of initdb on PATH.
func PostgresBinDir() (string, error) {
	if d := os.Getenv("DROVER_PG_BIN"); d != "" {
		if _, err := os.Stat(filepath.Join(d, "postgres")); err != nil {
			return "", fmt.Errorf("DROVER_PG_BIN=%s: %w", d, err)
		}
		return d, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return pgMajor(dirs[i]) > pgMajor(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "postgres")); err == nil {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		d := filepath.Dir(p)
		if r, err := filepath.EvalSymlinks(p); err == nil {
			d = filepath.Dir(r)
		}
		if _, err := os.Stat(filepath.Join(d, "postgres")); err == nil {
			return d, nil
		}
	}
	return "", errors.New("postgres not found (no /usr/lib/postgresql/*/bin/postgres, no initdb on PATH)")
}

func pgMajor(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

func startPostgres(bin string) (*PG, error) {
	pg := &PG{bin: bin, user: "drover", password: strconv.FormatInt(time.Now().UnixNano(), 36) + "x"}
	dir, err := os.MkdirTemp("", "drover-pg-")
	if err != nil {
		return nil, fmt.Errorf("make postgres dir: %w", err)
	}
	pg.Dir = dir
	if os.Geteuid() == 0 {
		// PostgreSQL refuses to run as root: run it as the postgres user
		// (Debian's package creates it), owning its directory.
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("running as root, and no postgres user to run the server as: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		pg.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, fmt.Errorf("chown postgres dir: %w", err)
		}
	}
	pwfile := filepath.Join(dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(pg.password+"\n"), 0o600); err != nil {
		return nil, err
	}
	if pg.cred != nil {
		_ = os.Chown(pwfile, int(pg.cred.Uid), int(pg.cred.Gid))
	}
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", filepath.Join(dir, "data"), "-U", pg.user,
		"--pwfile", pwfile, "--auth", "scram-sha-256", "--encoding", "UTF8", "--locale", "C", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: pg.cred, Pdeathsig: syscall.SIGKILL}
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %w\n%s", err, out)
	}
	_ = os.Remove(pwfile)
	var errs []error
	for range 3 { // a port taken between our probe and the server's bind: try another
		ports, err := freePorts(1)
		if err != nil {
			return nil, err
		}
		pg.port = ports[0]
		if err := pg.Start(); err == nil {
			return pg, nil
		} else {
			errs = append(errs, err)
		}
	}
	return nil, errors.Join(errs...)
}

// Start starts the server (again, after [PG.Stop]) on its port and waits
// until it accepts connections.
func (pg *PG) Start() error {
	pg.mu.Lock()
	defer pg.mu.Unlock()
	logf, err := os.OpenFile(filepath.Join(pg.Dir, "postgres.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o666)
	if err != nil {
		return err
	}
	defer logf.Close()
	if pg.cred != nil {
		_ = os.Chown(logf.Name(), int(pg.cred.Uid), int(pg.cred.Gid))
	}
	// fsync off: a test server trades durability against power loss (not
	// against kill -9: the page cache survives) for speed.
	cmd := exec.Command(filepath.Join(pg.bin, "postgres"), "-D", filepath.Join(pg.Dir, "data"),
		"-p", strconv.Itoa(pg.port), "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=300",
		"-c", "log_min_messages=warning")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: pg.cred, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	pg.cmd, pg.exited = cmd, make(chan struct{})
	exited := pg.exited
	go func() {
		pg.waitErr = cmd.Wait()
		close(exited)
	}()
	pg.AdminURL = pg.url("postgres")
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		conn, err := pgx.Connect(ctx, pg.AdminURL)
		cancel()
		if err == nil {
			_ = conn.Close(context.Background())
			return nil
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(filepath.Join(pg.Dir, "postgres.log"))
			return fmt.Errorf("postgres exited before it was ready (%v):\n%s", pg.waitErr, log)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("postgres not ready after 30s: %v", err)
		}
	}
}

// Stop stops the server (fast shutdown: SIGINT) and waits for it; for
// tests of what happens when the database is down. [PG.Start] brings it
// back.
func (pg *PG) Stop() {
	pg.mu.Lock()
	defer pg.mu.Unlock()
	if pg.cmd == nil {
		return
	}
	_ = pg.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-pg.exited:
	case <-time.After(15 * time.Second):
		_ = pg.cmd.Process.Kill()
		<-pg.exited
	}
	pg.cmd = nil
}

func (pg *PG) url(db string) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(pg.user, pg.password),
		Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(pg.port)), Path: "/" + db, RawQuery: "sslmode=disable"}
	return u.String()
}

// NewDatabase creates an empty database for one test and returns its URL;
// it is dropped when the test ends.
func (pg *PG) NewDatabase(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("t%d_%d", os.Getpid(), pg.dbs.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, pg.AdminURL)
	if err != nil {
		t.Fatalf("testenv: postgres: %v", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("testenv: create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if conn, err := pgx.Connect(ctx, pg.AdminURL); err == nil {
			_, _ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
			_ = conn.Close(context.Background())
		}
	})
	return pg.url(name)
}

// missing fails (CI) or skips (elsewhere) a test that needs what, never
// quietly.
func missing(t testing.TB, what string, err error, hint string) {
	t.Helper()
	msg := fmt.Sprintf("this test needs %s: %v; %s", what, err, hint)
	if os.Getenv("CI") == "true" {
		t.Fatalf("testenv: %s (CI=true: not skipping)", msg)
	}
	pgSkipWarning.Do(func() {
		fmt.Fprintf(stderr, "\n*** testenv: SKIPPING tests that need %s: %s ***\n\n", what, strings.TrimSpace(msg))
	})
	t.Skipf("SKIPPED (no %s): %s", what, msg)
}
