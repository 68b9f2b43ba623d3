package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/walferry/walferry/internal/humanize"

	"github.com/urfave/cli/v2"

	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/internal/repos"
	"github.com/walferry/walferry/storage"
)

func (a *app) repoCommand() *cli.Command {
	jsonFlag := &cli.BoolFlag{Name: "json", Usage: "print JSON for scripts"}
	return &cli.Command{
		Name:  "repo",
		Usage: "create, check and describe repositories",
		Description: `A repository holds one PostgreSQL cluster lineage: its metadata records the
system identifier, major version and WAL segment size, and every command
refuses a cluster that does not match.`,
		Subcommands: []*cli.Command{
			{
				Name:      "init",
				Usage:     "create a repository for the local cluster",
				UsageText: "walferry repo init --repo URL (--pgdata DIR | --pg-conn STRING) [--instance NAME] [--site NAME] [--compression lz4] [--json]",
				Description: `Reads the cluster's system identifier, major version and WAL segment size
from the control file of --pgdata (or, without --pgdata, from a connection
built from --pg-conn or libpq's PG* variables) and writes the repository
metadata to every --repo. Running it again for the same cluster changes
nothing; a location that holds another cluster's repository, or objects
that are not a walferry repository, is refused.

It also records generation 1 of the repository's lineage record: this
cluster, named by --instance (WALFERRY_INSTANCE, default the host name) and
--site (WALFERRY_SITE), on its current timeline, is the primary. Every
writer checks the record: archive-push, backup-push and wal-receive refuse
(exit 9) a server it does not name as primary, such as a copy promoted by
restore --target-action promote whose archive_command still points here.
Run again on a repository without a generation (made before lineage
records existed), it records one; a repository that has one keeps it.

With WALFERRY_ENCRYPTION_PASSPHRASE (or --encryption-passphrase-file) set,
the repository is encrypted: every object is sealed with AES-256-GCM under
a key derived from the passphrase; keep the passphrase, it cannot be
recovered.`,
				Flags:  withCommonFlags(jsonFlag, instanceFlag(), siteFlag()),
				Action: a.repoInit,
			},
			{
				Name:      "check",
				Usage:     "verify a repository is reachable, writable and belongs to this cluster",
				UsageText: "walferry repo check --repo URL (--pgdata DIR | --pg-conn STRING) [--json]",
				Description: `For every --repo: reads the metadata, compares the system identifier,
major version and segment size with the cluster's, then writes, reads back
and deletes a small test object. Exits non-zero at the first problem, naming
it and the fix.`,
				Flags:  withCommonFlags(jsonFlag),
				Action: a.repoCheck,
			},
			{
				Name:      "info",
				Usage:     "show what a repository holds",
				UsageText: "walferry repo info --repo URL [--json]",
				Description: `Prints the repository metadata and a summary of its contents: WAL
segments per timeline (first, last, gaps), history files, backups and
sizes.`,
				Flags:  withCommonFlags(jsonFlag),
				Action: a.repoInfo,
			},
		},
	}
}

// loadForCluster is what repo init and repo check start with: validated
// settings with at least one repository, the local cluster's identity, and
// the encryption passphrase if one is configured.
func (a *app) loadForCluster(c *cli.Context) (*settings, repo.Cluster, []byte, error) {
	s, err := a.load(c)
	if err != nil {
		return nil, repo.Cluster{}, nil, err
	}
	if err := s.requireRepos(); err != nil {
		return nil, repo.Cluster{}, nil, err
	}
	cl, err := clusterIdentity(c.Context, s)
	if err != nil {
		return nil, repo.Cluster{}, nil, err
	}
	pass, err := s.cfg.Passphrase()
	if err != nil {
		return nil, repo.Cluster{}, nil, err
	}
	return s, cl, pass, nil
}

// instanceFlag and siteFlag name this instance in the lineage record.
func instanceFlag() cli.Flag {
	return &cli.StringFlag{Name: "instance", EnvVars: []string{"WALFERRY_INSTANCE"},
		Usage: "this instance's `NAME` in the lineage record", DefaultText: "the host name"}
}

func siteFlag() cli.Flag {
	return &cli.StringFlag{Name: "site", EnvVars: []string{"WALFERRY_SITE"},
		Usage: "this instance's site (Kubernetes cluster, data centre) `NAME` in the lineage record"}
}

func (a *app) repoInit(c *cli.Context) error {
	s, cl, pass, err := a.loadForCluster(c)
	if err != nil {
		return err
	}
	tli, err := clusterTimeline(c.Context, s)
	if err != nil {
		return err
	}
	instance := c.String("instance")
	if instance == "" {
		if instance, err = os.Hostname(); err != nil {
			return usage(fmt.Errorf("name this instance with --instance (WALFERRY_INSTANCE): the host name is unknown (%v)", err))
		}
	}
	primary := &repo.Generation{Instance: instance, Site: c.String("site"), Timeline: tli}
	compression := s.cfg.Compression
	if compression == "" {
		compression = "lz4"
	}
	var results []repo.InitResult
	for _, url := range s.cfg.Repos {
		opts := s.store
		opts.CreateRoot = true
		res, err := repos.WithStore(c.Context, url, opts, func(st storage.Store) (repo.InitResult, error) {
			return repo.Init(c.Context, st, repo.InitOptions{
				Cluster: cl, Compression: compression, Passphrase: pass,
				CreatedBy: "walferry " + a.build.Version, Primary: primary,
			})
		})
		if err != nil {
			return err
		}
		results = append(results, res)
		if !c.Bool("json") {
			verb := "initialized"
			if !res.Created {
				verb = "already initialized"
			}
			m := res.Metadata
			enc := "not encrypted"
			if m.Encrypted() {
				enc = "encrypted, key id " + m.EncryptionKeyID
			}
			fmt.Fprintf(a.stdout, "%s %s: system identifier %d, PostgreSQL %d, %s WAL segments, compression %s, %s\n",
				url, verb, m.SystemID, m.PGMajor, humanize.Bytes(m.WALSegmentSize), m.Compression, enc)
			if g := res.Lineage; g != nil {
				verb := "lineage record"
				if res.LineageCreated {
					verb = "lineage record created"
				}
				fmt.Fprintf(a.stdout, "%s %s: %s\n", url, verb, g)
			}
		}
	}
	if c.Bool("json") {
		return a.printJSON(results)
	}
	return nil
}

func (a *app) repoCheck(c *cli.Context) error {
	s, cl, pass, err := a.loadForCluster(c)
	if err != nil {
		return err
	}
	var results []repo.CheckResult
	for _, url := range s.cfg.Repos {
		res, err := repos.WithStore(c.Context, url, s.store, func(st storage.Store) (repo.CheckResult, error) {
			return repo.Check(c.Context, st, cl, repo.OpenOptions{Passphrase: pass, Compression: s.cfg.Compression})
		})
		if err != nil {
			return err
		}
		results = append(results, res)
		if !c.Bool("json") {
			fmt.Fprintf(a.stdout, "%s: ok (system identifier %d matches %s; read, write and delete work)\n",
				url, res.Metadata.SystemID, cl.Source)
			if t := res.StaleTemporary; t.Objects > 0 {
				fmt.Fprintf(a.stdout, "%s: %d temporary objects (%s) left by interrupted writers (killed backup-push or archive-push); the next backup-push or backup-delete removes them\n",
					url, t.Objects, humanize.Bytes(t.Bytes))
			}
		}
	}
	if c.Bool("json") {
		return a.printJSON(results)
	}
	return nil
}

func (a *app) repoInfo(c *cli.Context) error {
	s, err := a.load(c)
	if err != nil {
		return err
	}
	if err := s.requireRepos(); err != nil {
		return err
	}
	o, err := s.reposOptions(nil)
	if err != nil {
		return err
	}
	var infos []repo.Info
	for _, url := range s.cfg.Repos {
		// Each on its own: info describes repositories of any cluster.
		one := o
		one.URLs = []string{url}
		set, err := repos.Open(c.Context, one)
		if err != nil {
			return err
		}
		info, err := set.Repos[0].Inspect(c.Context)
		set.Close()
		if err != nil {
			return err
		}
		infos = append(infos, info)
	}
	if c.Bool("json") {
		return a.printJSON(infos)
	}
	for i, info := range infos {
		if i > 0 {
			fmt.Fprintln(a.stdout)
		}
		a.printInfo(s.cfg.Repos[i], info)
	}
	return nil
}

func (a *app) printInfo(url string, info repo.Info) {
	m := info.Metadata
	w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "repository\t%s\n", url)
	fmt.Fprintf(w, "system identifier\t%d\n", m.SystemID)
	fmt.Fprintf(w, "PostgreSQL\t%d\n", m.PGMajor)
	fmt.Fprintf(w, "WAL segment size\t%s\n", humanize.Bytes(m.WALSegmentSize))
	fmt.Fprintf(w, "compression\t%s\n", m.Compression)
	if m.Encrypted() {
		fmt.Fprintf(w, "encryption\tAES-256-GCM, key id %s\n", m.EncryptionKeyID)
	} else {
		fmt.Fprintf(w, "encryption\tnone\n")
	}
	fmt.Fprintf(w, "created\t%s by %s\n", m.CreatedAt.Format("2006-01-02 15:04:05 MST"), m.CreatedBy)
	fmt.Fprintf(w, "WAL\t%s stored, %d history, %d backup labels, %d partial\n",
		humanize.Bytes(info.WALBytes), info.HistoryFiles, info.BackupLabels, info.Partials)
	if !info.LastWALTime.IsZero() {
		fmt.Fprintf(w, "last WAL upload\t%s\n", info.LastWALTime.Format("2006-01-02 15:04:05 MST"))
	}
	fmt.Fprintf(w, "backups\t%d (%s stored)\n", info.Backups, humanize.Bytes(info.BackupBytes))
	w.Flush()
	if len(info.Timelines) > 0 {
		fmt.Fprintln(a.stdout)
		tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TIMELINE\tSEGMENTS\tFIRST\tLAST\tGAPS")
		for _, t := range info.Timelines {
			fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%d\n", t.Timeline, t.Segments, t.First, t.Last, t.Gaps)
		}
		tw.Flush()
	}
}

// clusterTimeline is the local cluster's timeline: its control file's,
// or, without a data directory, the running server's current one.
func clusterTimeline(ctx context.Context, s *settings) (pg.TimeLineID, error) {
	if dir := s.cfg.PGData; dir != "" {
		cd, err := pg.ReadControlData(dir)
		if err != nil {
			return 0, &postgresError{fmt.Errorf("read the control file of %s: %w", dir, err)}
		}
		return cd.TimeLineID, nil
	}
	conn, err := pg.Connect(ctx, s.cfg.PGConn.Reveal())
	if err != nil {
		return 0, &postgresError{err}
	}
	defer conn.Close(context.WithoutCancel(ctx))
	info, err := pg.ClusterInfo(ctx, conn)
	if err != nil {
		return 0, &postgresError{err}
	}
	return info.Timeline, nil
}

// clusterIdentity reads the local cluster's identity from its data
// directory, or asks the server when no data directory is given.
func clusterIdentity(ctx context.Context, s *settings) (repo.Cluster, error) {
	if dir := s.cfg.PGData; dir != "" {
		cd, err := pg.ReadControlData(dir)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return repo.Cluster{}, &postgresError{fmt.Errorf("%s is not a PostgreSQL data directory (%v): fix --pgdata / PGDATA", dir, err)}
			}
			return repo.Cluster{}, &postgresError{fmt.Errorf("read the control file of %s: %w", dir, err)}
		}
		cl, err := repo.ClusterFromControlData(cd, dir)
		if err != nil {
			return repo.Cluster{}, &postgresError{err}
		}
		return cl, nil
	}
	connStr := s.cfg.PGConn.Reveal()
	if connStr == "" && os.Getenv("PGHOST") == "" && os.Getenv("PGPORT") == "" {
		return repo.Cluster{}, usage(errors.New("which cluster? pass --pgdata DIR (or set PGDATA), or --pg-conn / PGHOST to ask a running server"))
	}
	conn, err := pg.Connect(ctx, connStr)
	if err != nil {
		return repo.Cluster{}, &postgresError{err}
	}
	defer conn.Close(context.WithoutCancel(ctx))
	info, err := pg.ClusterInfo(ctx, conn)
	if err != nil {
		return repo.Cluster{}, &postgresError{err}
	}
	cfg := conn.Config()
	return repo.ClusterFromInfo(info, fmt.Sprintf("%s:%d", cfg.Host, cfg.Port)), nil
}
