package main

import (
	"strings"
	"testing"
)

// TestRoleCommandsUsage: demote, promote and rejoin refuse before any work
// when the server or the repository is not named, with the usage code.
func TestRoleCommandsUsage(t *testing.T) {
	t.Setenv("PGDATA", "")
	t.Setenv("WALFERRY_REPO", "")
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"demote", "--repo", "file:///nonexistent"}, "--pgdata"},
		{[]string{"promote", "--repo", "file:///nonexistent"}, "--pgdata"},
		{[]string{"rejoin", "--repo", "file:///nonexistent"}, "--pgdata"},
		{[]string{"promote", "--pgdata", t.TempDir()}, "repo"},
		{[]string{"demote", "--pgdata", t.TempDir(), "extra"}, "no arguments"},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, _, stderr := run(t, tt.args...)
			if code != 2 || !strings.Contains(stderr, tt.want) {
				t.Errorf("exit %d, stderr %q; want 2 mentioning %q", code, stderr, tt.want)
			}
		})
	}
}
