package main

import (
	"errors"
	"strings"
	"testing"
)

func env(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := vars[k]
		return v, ok
	}
}

// TestParseCall: the command lines walferry-hook serves itself, and what
// it reads from them and from the environment.
func TestParseCall(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	sock := map[string]string{"WALFERRY_SOCKET": "/run/w.sock"}
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want call
	}{
		{"push", []string{"archive-push", "pg_wal/000000010000000000000001"}, sock,
			call{hook: "archive-push", path: "pg_wal/000000010000000000000001", socket: "/run/w.sock", dataDir: "/data"}},
		{"push alias, socket flag", []string{"wal-push", "--socket", "/s", "x"}, nil,
			call{hook: "archive-push", path: "x", socket: "/s", dataDir: "/data"}},
		{"flag wins over the environment", []string{"archive-push", "-socket=/flag", "x"}, sock,
			call{hook: "archive-push", path: "x", socket: "/flag", dataDir: "/data"}},
		{"every flag of push", []string{"archive-push", "--repo", "file:///r", "-r", "s3://b/p", "--pgdata", "/pg", "--pg-conn", "host=x",
			"--compression", "zstd:3", "--encryption-passphrase-file", "/p", "--concurrency", "4", "--log-format", "json",
			"--log-level", "debug", "--ahead", "0x10", "--spool-dir", "/spool", "--socket", "/s", "--", "x"}, nil,
			call{hook: "archive-push", path: "x", socket: "/s", dataDir: "/pg", jsonErrors: true}},
		{"pgdata from the environment", []string{"archive-push", "x"}, map[string]string{"WALFERRY_SOCKET": "/s", "PGDATA": "/pg"},
			call{hook: "archive-push", path: "x", socket: "/s", dataDir: "/pg"}},
		{"-D", []string{"archive-push", "-D", "/pg", "x"}, sock,
			call{hook: "archive-push", path: "x", socket: "/run/w.sock", dataDir: "/pg"}},
		{"relative pgdata", []string{"archive-push", "-D", "sub", "x"}, sock,
			call{hook: "archive-push", path: "x", socket: "/run/w.sock", dataDir: "@cwd/sub"}},
		{"empty PGDATA is the working directory", []string{"archive-push", "x"}, map[string]string{"WALFERRY_SOCKET": "/s", "PGDATA": ""},
			call{hook: "archive-push", path: "x", socket: "/s", dataDir: "@cwd"}},
		{"get", []string{"archive-get", "000000010000000000000001", "pg_wal/RECOVERYXLOG"}, sock,
			call{hook: "archive-get", name: "000000010000000000000001", dest: "pg_wal/RECOVERYXLOG", socket: "/run/w.sock", dataDir: "/data"}},
		{"get partial", []string{"wal-fetch", "--partial", "--prefetch", "-1", "a", "b"}, sock,
			call{hook: "archive-get", name: "a", dest: "b", partial: true, socket: "/run/w.sock", dataDir: "/data"}},
		{"get partial from the environment", []string{"archive-get", "a", "b"}, map[string]string{"WALFERRY_SOCKET": "/s", "WALFERRY_ARCHIVE_PARTIAL": "1"},
			call{hook: "archive-get", name: "a", dest: "b", partial: true, socket: "/s", dataDir: "/data"}},
		{"get partial=false wins", []string{"archive-get", "--partial=false", "a", "b"}, map[string]string{"WALFERRY_SOCKET": "/s", "WALFERRY_ARCHIVE_PARTIAL": "true"},
			call{hook: "archive-get", name: "a", dest: "b", socket: "/s", dataDir: "/data"}},
		{"empty partial variable is false", []string{"archive-get", "a", "b"}, map[string]string{"WALFERRY_SOCKET": "/s", "WALFERRY_ARCHIVE_PARTIAL": ""},
			call{hook: "archive-get", name: "a", dest: "b", socket: "/s", dataDir: "/data"}},
		{"empty config and int variables", []string{"archive-push", "x"}, map[string]string{"WALFERRY_SOCKET": "/s", "WALFERRY_CONFIG": "", "WALFERRY_PUSH_AHEAD": ""},
			call{hook: "archive-push", path: "x", socket: "/s", dataDir: "/data"}},
	}
	cwd := t.TempDir()
	t.Chdir(cwd)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vars := map[string]string{"PGDATA": "/data"}
			for k, v := range tt.env {
				vars[k] = v
			}
			got, err := parseCall(tt.args, env(vars))
			if err != nil {
				t.Fatalf("walferry would run it: %v", err)
			}
			tt.want.dataDir = strings.Replace(tt.want.dataDir, "@cwd", cwd, 1)
			if *got != tt.want {
				t.Errorf("got  %+v\nwant %+v", *got, tt.want)
			}
		})
	}
}

// TestParseCallRunsWalferry: every command line walferry-hook does not
// serve itself goes to walferry.
func TestParseCallRunsWalferry(t *testing.T) {
	sock := map[string]string{"WALFERRY_SOCKET": "/s"}
	tests := []struct {
		name string
		args []string
		env  map[string]string
		why  string
	}{
		{"no command", nil, sock, "no command"},
		{"another command", []string{"backup-push"}, sock, "not a hook"},
		{"version", []string{"version"}, sock, "not a hook"},
		{"flag before the command", []string{"--socket", "/s", "archive-push", "x"}, nil, "not a hook"},
		{"no socket", []string{"archive-push", "x"}, nil, "no daemon socket"},
		{"empty socket", []string{"archive-push", "x"}, map[string]string{"WALFERRY_SOCKET": ""}, "no daemon socket"},
		{"empty socket flag", []string{"archive-push", "--socket=", "x"}, sock, "no daemon socket"},
		{"config file", []string{"archive-push", "--config", "/etc/w.yaml", "x"}, sock, "configuration file"},
		{"config file in the environment", []string{"archive-push", "x"}, map[string]string{"WALFERRY_SOCKET": "/s", "WALFERRY_CONFIG": "/etc/w.yaml"}, "configuration file"},
		{"help", []string{"archive-push", "--help"}, sock, `"--help"`},
		{"-h", []string{"archive-get", "-h", "a", "b"}, sock, `"-h"`},
		{"unknown flag", []string{"archive-push", "--bogus", "x"}, sock, `"--bogus"`},
		{"flag of the other hook", []string{"archive-push", "--partial", "x"}, sock, `"--partial"`},
		{"prefetch on push", []string{"archive-push", "--prefetch", "2", "x"}, sock, `"--prefetch"`},
		{"bad syntax", []string{"archive-push", "---socket", "/s", "x"}, sock, "bad flag syntax"},
		{"flag without its value", []string{"archive-push", "--socket"}, sock, "without its value"},
		{"int flag not a number", []string{"archive-push", "--ahead", "many", "x"}, sock, "--ahead"},
		{"int variable not a number", []string{"archive-push", "--ahead", "2", "x"}, map[string]string{"WALFERRY_SOCKET": "/s", "WALFERRY_PUSH_AHEAD": "x"}, "--ahead"},
		{"int variable of a common flag", []string{"archive-get", "a", "b"}, map[string]string{"WALFERRY_SOCKET": "/s", "WALFERRY_CONCURRENCY": "eight"}, "--concurrency"},
		{"bool flag value", []string{"archive-get", "--partial=maybe", "a", "b"}, sock, "--partial"},
		{"bool variable", []string{"archive-get", "a", "b"}, map[string]string{"WALFERRY_SOCKET": "/s", "WALFERRY_ARCHIVE_PARTIAL": "maybe"}, "--partial"},
		{"log format", []string{"archive-push", "--log-format", "xml", "x"}, sock, "log format"},
		{"log level", []string{"archive-push", "x"}, map[string]string{"WALFERRY_SOCKET": "/s", "WALFERRY_LOG_LEVEL": "loud"}, "log level"},
		{"push without path", []string{"archive-push"}, sock, "0 arguments"},
		{"push two paths", []string{"archive-push", "a", "b"}, sock, "2 arguments"},
		{"flag after the path", []string{"archive-push", "x", "--socket", "/s"}, sock, `"--socket"`},
		{"get one argument", []string{"archive-get", "a"}, sock, "1 arguments"},
		{"argument like a flag", []string{"archive-get", "--", "-a", "b"}, sock, `argument "-a"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseCall(tt.args, env(tt.env))
			if !errors.Is(err, errWalferry) {
				t.Fatalf("got %+v, %v; want walferry to run it", c, err)
			}
			if !strings.Contains(err.Error(), tt.why) {
				t.Errorf("reason %q does not mention %q", err, tt.why)
			}
		})
	}
}

func TestLogFormatAuto(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
	c, err := parseCall([]string{"archive-push", "x"}, env(map[string]string{"WALFERRY_SOCKET": "/s"}))
	if err != nil || !c.jsonErrors {
		t.Errorf("in a pod: %+v, %v; want JSON errors", c, err)
	}
	c, err = parseCall([]string{"archive-push", "--log-format", "text", "x"}, env(map[string]string{"WALFERRY_SOCKET": "/s"}))
	if err != nil || c.jsonErrors {
		t.Errorf("--log-format text in a pod: %+v, %v; want text errors", c, err)
	}
}
