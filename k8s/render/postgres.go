package render

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/walferry/walferry/internal/pgconf"
)

// PostgreSQL's configuration comes from a ConfigMap, the same file on
// every instance of both sites, since any of them may become the primary
// (seed 003). What differs per instance (restore_command with its
// repository and socket, primary_conninfo, primary_slot_name) is in
// walferry.conf, which bootstrap and the sidecar write in the data
// directory and the include line at the end brings in.

// postgresqlConf is postgresql.conf.
func (s *site) postgresqlConf() string {
	include := pgconf.Files{DataDir: PGData, ConfigFile: ConfigFile}.IncludeLine()
	hook := BinDir + "/walferry-hook"
	var b strings.Builder
	fmt.Fprintf(&b, `# postgresql.conf of %[1]s, the same on every instance of both sites:
# any instance may become the primary. Rendered by walferry k8s render.
# Per-instance settings (restore_command's repository, primary_conninfo,
# primary_slot_name) are in walferry.conf, included at the end.

listen_addresses = '*'
port = %[2]d
unix_socket_directories = '%[3]s'
hba_file = '%[4]s'
password_encryption = 'scram-sha-256'

# TLS: pg_hba.conf accepts TCP connections over TLS only.
ssl = on
ssl_cert_file = '%[5]s/%[6]s'
ssl_key_file = '%[5]s/%[7]s'
ssl_ca_file = '%[5]s/%[8]s'

# Replication. wal_log_hints lets pg_rewind turn an old primary into a
# standby (walferry rejoin) without a new copy.
wal_level = replica
wal_log_hints = on
max_wal_senders = 10
max_replication_slots = 10
wal_keep_size = '1GB'
# A forgotten standby's slot must not fill the primary's disk: past this
# the slot is invalidated and the standby falls back to the repository.
max_slot_wal_keep_size = '50GB'
hot_standby = on

# Archiving through walferry's hook (installed by walferry bootstrap into
# %[9]s), which hands the call to the sidecar's daemon (WALFERRY_SOCKET)
# and runs walferry itself when the daemon does not answer (WALFERRY_REPO).
archive_mode = on
archive_command = '%[10]s archive-push %%p'
archive_timeout = 60
restore_command = '%[10]s archive-get %%f %%p'

# walferry's settings for this instance (written by walferry bootstrap and
# the sidecar in the data directory); they win over the lines above.
%[11]s
`, s.o.Name, postgresPort, PGSocketDir, HBAFile, TLSDir, keyTLSCert, keyTLSKey, keyCA, BinDir, hook, include)
	return b.String()
}

// pgHBAConf is pg_hba.conf: seed 003's rules without its shortcuts. No
// trust, no md5, no samenet: on TCP only TLS with scram-sha-256, from
// anywhere (the standby site comes through a LoadBalancer); on the
// socket only the postgres user, by peer (the sidecar, in the pod).
func (s *site) pgHBAConf() string {
	return fmt.Sprintf(`# pg_hba.conf of %[1]s, the same on every instance of both sites.
# Rendered by walferry k8s render. TCP: TLS and scram-sha-256 only.
# TYPE   DATABASE     USER          ADDRESS   METHOD
local    all          postgres                peer
local    replication  postgres                peer
hostssl  replication  %-12[2]s  all       scram-sha-256
hostssl  all          all           all       scram-sha-256
`, s.o.Name, s.o.ReplicationUser)
}

// prepareScript runs in the postgres image before walferry bootstrap.
// It does the two things walferry does not: libpq reads a passfile only
// when no one but its owner may read it, and a Secret volume's files
// belong to root, so the passfile is written from the Secret into the
// pod's run directory, mode 0600; and on a primary site (WALFERRY_INITDB)
// the first instance of a new cluster is created with initdb, with the
// replication user. Every other instance is built by walferry bootstrap.
func (s *site) prepareScript() string {
	return fmt.Sprintf(`#!/bin/bash
# Runs before walferry bootstrap, in the postgres image (rendered by
# walferry k8s render). See docs/kubernetes.md.
set -euo pipefail

user=%[1]s
pw=${REPLICATION_PASSWORD:-}
if [[ -z $pw ]]; then
    echo "prepare: the Secret %[2]s has no %[3]s: fill it in, the same on both sites" >&2
    exit 1
fi

# The passfile: libpq ignores one that its group or others may read.
esc=${pw//\\/\\\\}
esc=${esc//:/\\:}
umask 077
printf '*:*:*:%%s:%%s\n' "$user" "$esc" >%[4]s.tmp
mv %[4]s.tmp %[4]s

# A new primary site: its first instance is initdb's. The others, and
# every instance of a standby site, are walferry bootstrap's.
if [[ ${WALFERRY_INITDB:-} != true || ${HOSTNAME##*-} != 0 || -s $PGDATA/PG_VERSION ]]; then
    exit 0
fi
if [[ -z ${SUPERUSER_PASSWORD:-} ]]; then
    echo "prepare: the Secret %[2]s has no %[5]s: fill it in, the same on both sites" >&2
    exit 1
fi
initdb --pgdata "$PGDATA" --username postgres --pwfile <(printf '%%s' "$SUPERUSER_PASSWORD") \
    --auth-local peer --auth-host scram-sha-256 --data-checksums --encoding UTF8
pg_ctl --pgdata "$PGDATA" --wait --options "-c listen_addresses='' -c unix_socket_directories=%[6]s" start
psql --host %[6]s --username postgres --dbname postgres --no-psqlrc --set ON_ERROR_STOP=1 \
    --set user="$user" --set pw="$pw" <<'SQL'
CREATE ROLE :"user" WITH LOGIN REPLICATION PASSWORD :'pw';
SQL
pg_ctl --pgdata "$PGDATA" --wait --mode fast stop
`, s.o.ReplicationUser, s.credentialsSecret(), keyReplicationPassword, PassFile, keySuperuserPassword, TmpDir)
}

func (s *site) configConfigMap() *corev1.ConfigMap {
	return &corev1.ConfigMap{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: metav1.ObjectMeta{Name: s.configMap(), Labels: s.clusterLabels()},
		Data: map[string]string{
			"postgresql.conf": s.postgresqlConf(),
			"pg_hba.conf":     s.pgHBAConf(),
		},
	}
}

func (s *site) scriptsConfigMap() *corev1.ConfigMap {
	return &corev1.ConfigMap{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: metav1.ObjectMeta{Name: s.scriptsMap(), Labels: s.clusterLabels()},
		Data:       map[string]string{"prepare.sh": s.prepareScript()},
	}
}
