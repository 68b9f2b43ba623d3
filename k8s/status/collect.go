package status

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
)

// connectTimeout bounds reaching the local PostgreSQL: status must answer
// quickly, and "down" is an answer.
const connectTimeout = 5 * time.Second

// CollectOptions say where Collect looks.
type CollectOptions struct {
	// PGConn is a libpq connection string; "" uses libpq's environment,
	// or the server found in DataDir's postmaster.pid when DataDir is set.
	PGConn string
	// DataDir is the instance's data directory, "" when not known.
	DataDir string
	// OpenRepo opens the repository backups are read from; nil when none
	// is configured. close releases it.
	OpenRepo func(ctx context.Context) (rp *repo.Repo, close func(), err error)
	// SidecarAddr and SidecarErr say which sidecar was asked and why it
	// did not answer.
	SidecarAddr string
	SidecarErr  error
	Limits      Limits
}

// Collect builds the report the sidecar would have served, without it:
// PostgreSQL (Role down when it cannot be reached), the repository's
// backups when one is configured, the sidecar marked unreachable, then
// Diagnose. Nothing here fails: what cannot be read is reported.
func Collect(ctx context.Context, o CollectOptions) Report {
	r := New(time.Now())
	r.DataDir = o.DataDir
	r.Sidecar = Sidecar{Address: o.SidecarAddr}
	if o.SidecarErr != nil {
		r.Sidecar.Error = o.SidecarErr.Error()
	}
	collectPostgres(ctx, o, &r)
	if o.OpenRepo != nil {
		rp, closeRepo, err := o.OpenRepo(ctx)
		if err != nil {
			RepositoryError(&r, fmt.Errorf("open the repository: %w", err))
		} else {
			_ = FromRepository(ctx, rp, &r) // recorded in r.Backup.Error
			closeRepo()
		}
	}
	Diagnose(&r, o.Limits)
	return r
}

func collectPostgres(ctx context.Context, o CollectOptions, r *Report) {
	conn, err := LocalConnString(o.PGConn, o.DataDir)
	if err != nil {
		r.Postgres.Error = err.Error()
		return
	}
	cctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	c, err := pg.Connect(cctx, conn)
	if err != nil {
		r.Postgres.Error = err.Error()
		return
	}
	defer c.Close(context.WithoutCancel(ctx))
	_ = FromPostgres(cctx, c, r) // recorded in r.Postgres.Error; Role stays down
}

// LocalConnString returns the connection string for the instance: pgConn
// when given; else, when dataDir is given, the server that
// dataDir/postmaster.pid names (its socket directory, or its first listen
// address, and its port; the data directory's owner as user, dbname
// postgres); else "" (libpq's environment). A missing postmaster.pid means
// no server runs on dataDir.
func LocalConnString(pgConn, dataDir string) (string, error) {
	if pgConn != "" || dataDir == "" {
		return pgConn, nil
	}
	pf, err := pg.ReadPIDFile(dataDir)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("no PostgreSQL runs on %s: it has no postmaster.pid", dataDir)
	}
	if err != nil {
		return "", fmt.Errorf("%s: %w", dataDir, err)
	}
	conn := fmt.Sprintf("host='%s' port=%d dbname=postgres", quoteValue(pf.Host()), pf.Port)
	if owner := ownerName(dataDir); owner != "" {
		conn += fmt.Sprintf(" user='%s'", quoteValue(owner))
	}
	return conn, nil
}

func quoteValue(s string) string {
	return strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s)
}

// ownerName is the name of dir's owner, "" when unknown.
func ownerName(dir string) string {
	fi, err := os.Stat(dir)
	if err != nil {
		return ""
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return ""
	}
	u, err := user.LookupId(strconv.Itoa(int(st.Uid)))
	if err != nil {
		return ""
	}
	return u.Username
}
