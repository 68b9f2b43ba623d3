package role

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/walferry/walferry/internal/pg"
)

func TestLatestHistoryTLI(t *testing.T) {
	tests := []struct {
		name  string
		files []string
		want  pg.TimeLineID
	}{
		{"none", []string{"000000010000000000000003"}, 0},
		{"one", []string{"00000002.history", "000000020000000000000004"}, 2},
		{"highest of several", []string{"00000002.history", "0000000A.history", "00000003.history", "00000003.history.tmp"}, 10},
		{"not history", []string{"000000030000000000000004.partial", "RECOVERYHISTORY"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, f := range tt.files {
				if err := os.WriteFile(filepath.Join(dir, f), nil, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if got := latestHistoryTLI(dir); got != tt.want {
				t.Errorf("latestHistoryTLI = %d, want %d", got, tt.want)
			}
		})
	}
	if got := latestHistoryTLI(filepath.Join(t.TempDir(), "missing")); got != 0 {
		t.Errorf("missing directory: %d, want 0", got)
	}
}
