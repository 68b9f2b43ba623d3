package main

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/walferry/walferry/k8s/render"
)

func (a *app) k8sCommand() *cli.Command {
	return &cli.Command{
		Name:  "k8s",
		Usage: "Kubernetes manifests of a primary or standby site",
		Subcommands: []*cli.Command{{
			Name:      "render",
			Usage:     "write the Kustomize base and the site's overlay",
			UsageText: "walferry k8s render --site primary|standby --name NAME --repo URL [--instances N] [--source-host HOST] [--image IMAGE] [--out DIR] [...]",
			Description: `Writes DIR/base (what both sites share: postgresql.conf and pg_hba.conf,
the credential templates, the read-write and read-only Services) and
DIR/NAME-SITE (the site's StatefulSet, its headless Service, RBAC, TLS
template; on a primary site the LoadBalancer the standby site streams
through and, with --backup-cronjob, the backup CronJob). Render both sites
into one DIR: they share the base, which must then come from the same
--name and --repo (a base of other settings is refused without --force).

   walferry k8s render --site primary --name xkube --repo s3://bucket/xkube --image registry.example.com/walferry:v1
   walferry k8s render --site standby --name xkube --repo s3://bucket/xkube --image registry.example.com/walferry:v1 \
       --source-host xkube.prod.example.com
   kubectl apply -k out/xkube-primary     # in the primary site's cluster

Fill in the Secret templates first (the same credentials on both sites).
See docs/kubernetes.md.`,
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "site", Required: true, Usage: "primary or standby"},
				&cli.StringFlag{Name: "name", Required: true, Usage: "the cluster's `NAME`, the same on both sites (Services NAME and NAME-replica, StatefulSet NAME-SITE)"},
				&cli.StringFlag{Name: "repo", EnvVars: []string{"WALFERRY_REPO"}, Usage: "the repository `URL` both sites share"},
				&cli.IntFlag{Name: "instances", Value: render.DefaultInstances, Usage: "instances of this site: `N` (the first of a primary site is the primary)"},
				&cli.IntFlag{Name: "standby-instances", Usage: "primary site: the standby site's instances, whose slots the primary keeps: `N`", DefaultText: "--instances"},
				&cli.StringFlag{Name: "source-host", Usage: "standby site: the primary site's LoadBalancer `HOST` (none: the site replays the repository only)"},
				&cli.StringFlag{Name: "image", Value: render.DefaultImage, Usage: "walferry's `IMAGE` (make image)"},
				&cli.StringFlag{Name: "postgres-image", Value: render.DefaultPostgresImage, Usage: "PostgreSQL's `IMAGE` (Debian's postgres user, uid 999)"},
				&cli.StringFlag{Name: "namespace", Value: render.DefaultNamespace, Usage: "the `NAMESPACE` the overlay deploys into"},
				&cli.StringFlag{Name: "replication-user", Value: render.DefaultReplicationUser, Usage: "the replication `ROLE`, the same on both sites"},
				&cli.StringFlag{Name: "backup-schedule", Value: render.DefaultBackupSchedule, Usage: "primary site: the backups' cron `SCHEDULE`"},
				&cli.BoolFlag{Name: "backup-cronjob", Usage: "primary site: take the backups with a CronJob (backup-push --remote) instead of the sidecar"},
				&cli.BoolFlag{Name: "wal-receive", Usage: "primary site: the sidecar streams the primary's WAL into the repository (for a standby site fed by the repository alone)"},
				&cli.BoolFlag{Name: "service-monitor", Usage: "add a Prometheus Operator ServiceMonitor"},
				&cli.StringFlag{Name: "workload-identity", Usage: "reach the repository as this cloud `IDENTITY` (IAM role ARN, Google service account, Azure client id) instead of keys"},
				&cli.StringSliceFlag{Name: "load-balancer-source-range", Usage: "primary site: `CIDR` allowed to reach the LoadBalancer (repeatable)"},
				&cli.StringFlag{Name: "storage-size", Value: render.DefaultStorageSize, Usage: "the data volume's `SIZE`"},
				&cli.StringFlag{Name: "storage-class", Usage: "the data volume's `CLASS` (default: the cluster's)"},
				&cli.StringFlag{Name: "out", Value: "k8s-manifests", Usage: "write into `DIR`"},
				&cli.BoolFlag{Name: "force", Usage: "overwrite a base rendered with other settings"},
			},
			Action: a.k8sRender,
		}},
	}
}

func (a *app) k8sRender(c *cli.Context) error {
	if c.NArg() > 0 {
		return usage(fmt.Errorf("k8s render takes no arguments, got %q", c.Args().Slice()))
	}
	// render.Options takes 0 for its default; given on the command line it
	// is a mistake, not a request for the default.
	for _, name := range []string{"instances", "standby-instances"} {
		if c.IsSet(name) && c.Int(name) < 1 {
			return usage(fmt.Errorf("--%s %d: a site has at least one instance (1 to 9)", name, c.Int(name)))
		}
	}
	o := render.Options{
		Site:                     c.String("site"),
		Name:                     c.String("name"),
		Namespace:                c.String("namespace"),
		Instances:                c.Int("instances"),
		StandbyInstances:         c.Int("standby-instances"),
		Repo:                     c.String("repo"),
		SourceHost:               c.String("source-host"),
		Image:                    c.String("image"),
		PostgresImage:            c.String("postgres-image"),
		ReplicationUser:          c.String("replication-user"),
		BackupSchedule:           c.String("backup-schedule"),
		BackupCronJob:            c.Bool("backup-cronjob"),
		WALReceive:               c.Bool("wal-receive"),
		ServiceMonitor:           c.Bool("service-monitor"),
		WorkloadIdentity:         c.String("workload-identity"),
		LoadBalancerSourceRanges: c.StringSlice("load-balancer-source-range"),
		StorageSize:              c.String("storage-size"),
		StorageClass:             c.String("storage-class"),
	}
	files, err := render.Render(o)
	if errors.Is(err, render.ErrInvalid) {
		return usage(err)
	}
	if err != nil {
		return err
	}
	out := c.String("out")
	if err := render.Write(out, files, c.Bool("force")); err != nil {
		return err
	}
	for _, f := range files {
		fmt.Fprintln(a.stdout, filepath.Join(out, filepath.FromSlash(f.Path)))
	}
	return nil
}
