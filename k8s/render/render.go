// Package render writes the Kubernetes manifests of one walferry site:
// "walferry k8s render". The output is a Kustomize base, the same for
// both sites of a cluster (configuration, credential templates, the
// read-write and read-only Services), and one overlay per site (the
// StatefulSet, its RBAC, the LoadBalancer and the backup CronJob of a
// primary site), the xkube-prod / xkube-standby shape of seed 000.
//
// Every document is built from the k8s.io/api types and printed with
// sorted keys, so the same Options always give the same bytes (golden
// files, clean diffs between renders). Every container argument is a flag
// the walferry binary of this build accepts (the cmd package's test
// parses them with the real commands), every probe is an endpoint the
// sidecar serves, and every Secret key a container reads is in the
// rendered Secret template (this package's tests).
//
// The package knows Kubernetes and nothing else: it opens no repository
// and reaches no server.
package render

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/robfig/cron/v3"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/k8s/bootstrap"
	"github.com/walferry/walferry/k8s/status"
	"github.com/walferry/walferry/storage"
)

// Sites.
const (
	// SitePrimary is the site whose first instance is the primary: it
	// initializes the cluster and the repository, takes the backups and
	// is reached by the standby site through a LoadBalancer.
	SitePrimary = "primary"
	// SiteStandby is a site of standbys: built from the repository or
	// the primary site, replaying the repository and streaming from the
	// primary site when it answers.
	SiteStandby = "standby"
)

// ErrInvalid matches every error of Options.Validate.
var ErrInvalid = failure.New(failure.Usage, "invalid k8s render request")

// Defaults of Options.
const (
	DefaultImage           = "walferry:latest"
	DefaultPostgresImage   = "postgres:15"
	DefaultInstances       = 1
	DefaultNamespace       = "default"
	DefaultReplicationUser = "replicator"
	DefaultBackupSchedule  = "0 2 * * *"
	DefaultStorageSize     = "10Gi"
)

// Options describe one site.
type Options struct {
	// Site is SitePrimary or SiteStandby.
	Site string
	// Name is the cluster's name, the same on both sites (seed 000's
	// "xkube"): the Services are NAME (read-write) and NAME-replica
	// (read-only), the site's StatefulSet NAME-SITE.
	Name string
	// Namespace is where the overlay puts everything (the RoleBinding
	// names its ServiceAccount there).
	Namespace string
	// Instances is the StatefulSet's replica count.
	Instances int
	// StandbyInstances is how many instances the standby site has: the
	// primary site's sidecar keeps a slot for each (default Instances).
	StandbyInstances int
	// Repo is the repository URL both sites share.
	Repo string
	// SourceHost is, for a standby site, the primary site's LoadBalancer
	// address (host name or IP) it streams from; empty for a standby fed
	// only by the repository (seed 002).
	SourceHost string
	// Image is walferry's image (Dockerfile); PostgresImage the server's.
	Image, PostgresImage string
	// ReplicationUser is the role the instances replicate as, the same
	// on both sites.
	ReplicationUser string
	// BackupSchedule is the cron schedule of the primary site's backups;
	// BackupCronJob takes them with a CronJob running backup-push
	// --remote instead of the sidecar.
	BackupSchedule string
	BackupCronJob  bool
	// WALReceive streams the primary's WAL into the repository from its
	// sidecar (.partial objects; what a repository-fed standby needs).
	WALReceive bool
	// ServiceMonitor adds a Prometheus Operator ServiceMonitor.
	ServiceMonitor bool
	// WorkloadIdentity is the cloud identity the ServiceAccount is bound
	// to instead of keys in a Secret: an IAM role ARN (s3), a Google
	// service account e-mail (gs), a managed identity's client id (azure).
	WorkloadIdentity string
	// LoadBalancerSourceRanges limits who reaches the primary site's
	// LoadBalancer (the standby site's egress addresses).
	LoadBalancerSourceRanges []string
	// StorageSize and StorageClass are the data volume's.
	StorageSize, StorageClass string
}

// WithDefaults fills the empty fields with the defaults.
func (o Options) WithDefaults() Options {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&o.Namespace, DefaultNamespace)
	def(&o.Image, DefaultImage)
	def(&o.PostgresImage, DefaultPostgresImage)
	def(&o.ReplicationUser, DefaultReplicationUser)
	def(&o.BackupSchedule, DefaultBackupSchedule)
	def(&o.StorageSize, DefaultStorageSize)
	if o.Instances == 0 {
		o.Instances = DefaultInstances
	}
	if o.StandbyInstances == 0 {
		o.StandbyInstances = o.Instances
	}
	return o
}

// dnsLabel is a Kubernetes object name usable as a DNS label.
var dnsLabel = regexp.MustCompile(`^[a-z]([-a-z0-9]*[a-z0-9])?$`)

// roleName is a PostgreSQL role name that needs no quoting anywhere
// (connection strings, passfiles, SQL).
var roleName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// Validate checks the options (after WithDefaults); errors name the flag
// and the fix.
func (o Options) Validate() error {
	invalid := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, a...))
	}
	switch o.Site {
	case SitePrimary, SiteStandby:
	default:
		return invalid("--site %q: want primary or standby", o.Site)
	}
	// The longest name built from Name is the pods' "NAME-standby-N",
	// and a pod's host name is at most 63 characters.
	if !dnsLabel.MatchString(o.Name) || len(o.Name) > 40 {
		return invalid("--name %q: want a DNS label of at most 40 characters (lower-case letters, digits, '-'), e.g. xkube", o.Name)
	}
	if !dnsLabel.MatchString(o.Namespace) {
		return invalid("--namespace %q: want a DNS label, e.g. databases", o.Namespace)
	}
	if o.Instances < 1 || o.Instances > 9 {
		return invalid("--instances %d: want 1 to 9 (one primary and its replicas, or one site's standbys)", o.Instances)
	}
	if o.StandbyInstances < 1 || o.StandbyInstances > 9 {
		return invalid("--standby-instances %d: want 1 to 9 (the standby site's instances)", o.StandbyInstances)
	}
	if _, err := resource.ParseQuantity(o.StorageSize); err != nil || strings.HasPrefix(o.StorageSize, "-") {
		return invalid("--storage-size %q: want a Kubernetes quantity, e.g. 10Gi or 500Mi", o.StorageSize)
	}
	loc, err := storage.ParseURL(o.Repo)
	if err != nil {
		return fmt.Errorf("%w: --repo: %w", ErrInvalid, err)
	}
	if o.WorkloadIdentity != "" && loc.Scheme == "file" {
		return invalid("--workload-identity: a file:// repository is a mounted volume, it has no cloud identity; drop the flag or use s3://, gs:// or azure://")
	}
	if o.SourceHost != "" {
		if o.Site == SitePrimary {
			return invalid("--source-host is for a standby site (the primary site's LoadBalancer address); a primary site has no source")
		}
		if strings.ContainsAny(o.SourceHost, " '\\=:/") {
			return invalid("--source-host %q: want a host name or an IP address (the port is 5432)", o.SourceHost)
		}
	}
	if o.Site == SiteStandby {
		if o.BackupCronJob {
			return invalid("--backup-cronjob: backups are taken on the primary site; render it there")
		}
		if o.WALReceive {
			return invalid("--wal-receive streams a primary's WAL: render it with --site primary")
		}
		if len(o.LoadBalancerSourceRanges) > 0 {
			return invalid("--load-balancer-source-range: only the primary site has a LoadBalancer")
		}
	}
	if !roleName.MatchString(o.ReplicationUser) {
		return invalid("--replication-user %q: want a lower-case role name (letters, digits, '_'), e.g. replicator", o.ReplicationUser)
	}
	if _, err := cron.ParseStandard(o.BackupSchedule); err != nil || strings.ContainsAny(o.BackupSchedule, "\n'") {
		return invalid("--backup-schedule %q: want a cron schedule of 5 fields (minute hour day-of-month month day-of-week), e.g. \"0 2 * * *\" or @daily", o.BackupSchedule)
	}
	for _, r := range o.LoadBalancerSourceRanges {
		if _, err := netip.ParsePrefix(r); err != nil {
			return invalid("--load-balancer-source-range %q: want a CIDR, e.g. 203.0.113.0/24", r)
		}
	}
	for _, img := range []string{o.Image, o.PostgresImage} {
		if strings.ContainsAny(img, " \t\n") {
			return invalid("image %q: want an image reference, e.g. registry.example.com/walferry:v1", img)
		}
	}
	return nil
}

// File is one rendered file, Path relative to the output directory.
type File struct {
	Path string
	Data []byte
}

// Render renders the site's base and overlay. The base is the same for
// both sites of one Name and Repo, so rendering the primary and the
// standby site into one directory gives one base and two overlays.
func Render(o Options) ([]File, error) {
	o = o.WithDefaults()
	if err := o.Validate(); err != nil {
		return nil, err
	}
	loc, _ := storage.ParseURL(o.Repo)
	port, err := SidecarPort()
	if err != nil {
		return nil, err
	}
	s := &site{o: o, repo: loc, sidecarPort: int32(port)}
	files, err := s.files()
	if err != nil {
		return nil, err
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	return files, nil
}

// Write writes files under dir. A base file that exists with other
// content was rendered with other settings (another --name or --repo):
// it is refused, naming the file, unless force.
func Write(dir string, files []File, force bool) error {
	for _, f := range files {
		p := filepath.Join(dir, filepath.FromSlash(f.Path))
		if !force && strings.HasPrefix(f.Path, BaseDir+"/") {
			old, err := os.ReadFile(p)
			if err == nil && !bytes.Equal(old, f.Data) {
				return failure.New(failure.Usage, fmt.Sprintf(
					"k8s render: %s exists with other content: the other site was rendered with another --name, --repo or walferry version; render both sites with the same settings, use another --out, or pass --force to overwrite it", p))
			}
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("k8s render: %w", err)
			}
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("k8s render: %w", err)
		}
		if err := os.WriteFile(p, f.Data, 0o644); err != nil {
			return fmt.Errorf("k8s render: %w", err)
		}
	}
	return nil
}

// BaseDir is the base's directory in the output.
const BaseDir = "base"

// OverlayDir is the overlay directory of a site: NAME-SITE, as the
// StatefulSet.
func OverlayDir(o Options) string { return o.Name + "-" + o.Site }

// SidecarPort is the port the sidecar serves HTTP on by default: the
// port of walferry status's default sidecar address.
func SidecarPort() (int, error) {
	_, port, err := net.SplitHostPort(status.DefaultSidecarAddr)
	if err != nil {
		return 0, fmt.Errorf("k8s render: the sidecar's default address %q: %w", status.DefaultSidecarAddr, err)
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		return 0, fmt.Errorf("k8s render: the sidecar's default address %q: %w", status.DefaultSidecarAddr, err)
	}
	return n, nil
}

// slotName is the slot walferry bootstrap and the sidecar use for a pod
// by default (they derive it from the host name, the pod's name).
func slotName(pod string) string { return bootstrap.DefaultSlotName(pod) }
