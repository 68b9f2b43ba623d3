package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walferry/walferry/internal/testenv"
)

// secretEnv sets every secret walferry reads from its environment to a
// value unique to this test and returns the values to look for.
func secretEnv(t *testing.T) []string {
	t.Helper()
	const s = "Wf7sEcReT" // no output has a reason to contain it
	gcsKey := filepath.Join(t.TempDir(), "gcs.json")
	gcsJSON := fmt.Sprintf(`{"type":"service_account","project_id":"p","private_key_id":"k","client_email":"w@p.iam.gserviceaccount.com","token_uri":"http://127.0.0.1:1/token","private_key":"-----BEGIN PRIVATE KEY-----\n%sgcs\n-----END PRIVATE KEY-----\n"}`, s)
	if err := os.WriteFile(gcsKey, []byte(gcsJSON), 0o600); err != nil {
		t.Fatal(err)
	}
	azureKey := base64.StdEncoding.EncodeToString([]byte(s + "azurekey"))
	env := map[string]string{
		"AWS_ACCESS_KEY_ID":               "AKIAWALFERRYTEST",
		"AWS_SECRET_ACCESS_KEY":           s + "awssecret",
		"AWS_SESSION_TOKEN":               s + "awstoken",
		"AZURE_STORAGE_ACCOUNT":           "walferrytest",
		"AZURE_STORAGE_KEY":               azureKey,
		"AZURE_STORAGE_SAS_TOKEN":         "sv=2024-01-01&sig=" + s + "sas",
		"AZURE_STORAGE_CONNECTION_STRING": "",
		"GOOGLE_APPLICATION_CREDENTIALS":  gcsKey,
		"WALFERRY_ENCRYPTION_PASSPHRASE":  s + "passphrase",
		"PGPASSWORD":                      s + "pgpassword",
		"WALFERRY_PG_CONN":                "host=127.0.0.1 port=1 user=walferry password=" + s + "pgconn connect_timeout=1 sslmode=disable",
		"WALFERRY_SOURCE_CONN":            "postgres://replicator:" + s + "sourceconn@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=1",
		"WALFERRY_LOG_LEVEL":              "debug",
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
	return []string{s, azureKey}
}

// leafCommands returns the path of every command that runs, planned ones
// included, walking the command tree so that a new command is covered
// without touching this test.
func leafCommands(cmds []*cli.Command, parent []string) [][]string {
	var out [][]string
	for _, c := range cmds {
		if c.Hidden || c.Name == "help" {
			continue
		}
		path := append(append([]string(nil), parent...), c.Name)
		if len(c.Subcommands) > 0 {
			out = append(out, leafCommands(c.Subcommands, path)...)
			continue
		}
		out = append(out, path)
	}
	return out
}

// hasFlag reports whether cmd (or its common flags) has a flag name.
func hasFlag(cmd *cli.Command, name string) bool {
	for _, f := range cmd.Flags {
		for _, n := range f.Names() {
			if n == name {
				return true
			}
		}
	}
	return false
}

// TestSecretsNeverPrinted runs every command with every secret set in the
// environment: its --help, then the command itself against a filesystem
// repository (the deep paths) and against unreachable S3, GCS and Azure
// stores (the error paths), with debug logging, and looks for the secrets
// in everything it printed and in the /metrics, /status and /healthz
// answers of the commands that serve them. A secret printed anywhere is a
// bug to fix where the value is formatted, never here.
func TestSecretsNeverPrinted(t *testing.T) {
	secrets := secretEnv(t)
	e := newHookEnv(t) // encrypted with the passphrase above
	t.Setenv("PGDATA", e.dataDir)
	seg, _ := writeSegment(t, e.dataDir, 1)
	clouds := "s3://bucket/p?endpoint=http://127.0.0.1:1," +
		"gs://bucket/p?endpoint=http://127.0.0.1:1," +
		"azure://container/p?endpoint=http://127.0.0.1:1"
	cfgFile := filepath.Join(t.TempDir(), "walferry.yaml")
	cfgYAML := "pg_conn: \"host=127.0.0.1 port=1 user=w password=" + secrets[0] + "yaml connect_timeout=1\"\n" +
		"storage:\n  retry_attempts: 1\n  retry_max_elapsed: 2s\n"
	if err := os.WriteFile(cfgFile, []byte(cfgYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("WALFERRY_CONFIG", cfgFile)

	// Positional arguments that get each command past its usage checks.
	args := map[string][]string{
		"archive-push":  {filepath.Join("pg_wal", seg)},
		"archive-get":   {"000000010000000000000002", filepath.Join("pg_wal", "RECOVERYXLOG")},
		"backup-show":   {"LATEST", "--json"},
		"backup-list":   {"--json"},
		"backup-delete": {"--retain-full", "1", "--dry-run"},
		"restore":       {"LATEST", "--pgdata", filepath.Join(t.TempDir(), "restored")},
		"bootstrap":     {"--pgdata", filepath.Join(t.TempDir(), "standby")},
		"repo info":     {"--json"},
		"status":        {"--json"},
		"k8s render":    {"--site", "primary", "--out", t.TempDir()},
		"daemon":        {"--socket", filepath.Join(t.TempDir(), "s.sock")},
	}
	a := newApp(io.Discard, io.Discard, buildInfo{})
	paths := leafCommands(a.cli.Commands, nil)
	if len(paths) < 20 {
		t.Fatalf("found %d commands, want every one: %v", len(paths), paths)
	}
	check := func(t *testing.T, what, out string) {
		t.Helper()
		for _, s := range secrets {
			if i := strings.Index(out, s); i >= 0 {
				t.Errorf("%s prints a secret: ...%s...", what, out[max(0, i-120):min(len(out), i+len(s)+40)])
			}
		}
	}
	// A secret pasted into a repository URL is refused without echoing it.
	for _, repo := range []string{
		"s3://AKIAWALFERRYTEST:" + secrets[0] + "url@bucket/p",
		"azure://container/p?sig=" + secrets[0] + "sas",
	} {
		_, out, errOut := run(t, "repo", "info", "--repo", repo)
		check(t, "repo info --repo URL-with-a-secret", out+errOut)
	}
	for _, path := range paths {
		name := strings.Join(path, " ")
		t.Run(name, func(t *testing.T) {
			_, out, errOut := run(t, append(path, "--help")...)
			check(t, name+" --help", out+errOut)
			cmd, _, _ := a.commandOf(t, path)
			for _, repo := range []string{e.repoURL, clouds} {
				// Flags first: the hooks take everything after theirs as arguments.
				argv := append(append([]string(nil), path...), "--repo", repo)
				var addr string
				for _, f := range []string{"metrics-address", "listen"} {
					if hasFlag(cmd, f) {
						ports, err := testenv.FreePorts(1)
						if err != nil {
							t.Fatal(err)
						}
						addr = "127.0.0.1:" + ports[0]
						argv = append(argv, "--"+f, addr)
					}
				}
				argv = append(argv, args[name]...)
				out, served := runServing(t, addr, argv...)
				check(t, strings.Join(argv, " "), out)
				check(t, name+" endpoints", served)
			}
		})
	}
}

// runServing runs a command for at most a few seconds (daemons are
// stopped then) and returns what it printed; when addr is set it also
// returns the answers of its HTTP endpoints, read while it runs.
func runServing(t *testing.T, addr string, args ...string) (printed, served string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 6*time.Second)
	defer cancel()
	var out, errOut syncBuffer
	a := newApp(&out, &errOut, buildInfo{Version: "test", Commit: "test"})
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := a.Run(ctx, append([]string{"walferry"}, args...)); err != nil {
			a.reportError(err, exitCode(err))
		}
	}()
	var bodies strings.Builder
	if addr == "" {
		<-done
	} else {
		client := &http.Client{Timeout: time.Second}
		for got := false; !got; {
			select {
			case <-done:
				got = true
				continue
			case <-time.After(100 * time.Millisecond):
			}
			for _, p := range []string{"/metrics", "/status", "/healthz", "/readyz"} {
				resp, err := client.Get("http://" + addr + p)
				if err != nil {
					break
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				bodies.WriteString(p + ": " + string(b) + "\n")
				got = true
			}
		}
	}
	cancel()
	<-done
	return out.String() + errOut.String(), bodies.String()
}
