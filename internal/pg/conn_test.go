package pg

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestParseSizeSetting(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{"16MB", 16 << 20, false},
		{"1GB", 1 << 30, false},
		{"512kB", 512 << 10, false},
		{"8192", 8192, false},
		{"8192B", 8192, false},
		{"2TB", 2 << 40, false},
		{"", 0, true},
		{"MB", 0, true},
		{"16mb", 0, true},
		{"16 XB", 0, true},
		{"-16MB", 0, true},
		{"99999999999TB", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseSizeSetting(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseSizeSetting(%q) = %d, %v; want %d (error %v)", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestParseConnConfigNeverShowsPassword(t *testing.T) {
	const secret = "s3cr3t-Pa55"
	tests := []string{
		"host=db port=notaport password=" + secret,
		"host=db port=notaport password='" + secret + "'",
		"host=db password = '" + secret + "' port=notaport",
		"password=" + secret + " connect_timeout=soon",
		"postgres://alice:" + secret + "@db:notaport/app",
		"postgresql://alice:" + secret + "@db/app?connect_timeout=soon",
		"host=db password='" + secret + " port=1", // unterminated quote
	}
	for _, cs := range tests {
		_, err := ParseConnConfig(cs)
		if err == nil {
			t.Errorf("ParseConnConfig(%q) succeeded", cs)
			continue
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error for %q shows the password: %v", cs, err)
		}
		if !strings.HasPrefix(err.Error(), "pg: invalid connection settings: ") {
			t.Errorf("error lacks context: %v", err)
		}
	}

	t.Setenv("PGPASSWORD", secret)
	t.Setenv("PGPORT", "notaport")
	_, err := ParseConnConfig("")
	if err == nil {
		t.Fatal("bad PGPORT accepted")
	}
	if strings.Contains(err.Error(), secret) {
		t.Errorf("error shows PGPASSWORD: %v", err)
	}
}

func TestParseConnConfigEnvironment(t *testing.T) {
	t.Setenv("PGHOST", "db.example")
	t.Setenv("PGPORT", "6543")
	t.Setenv("PGUSER", "alice")
	t.Setenv("PGDATABASE", "app")
	t.Setenv("PGPASSWORD", "pw")
	t.Setenv("PGSSLMODE", "disable")
	t.Setenv("PGAPPNAME", "")
	cfg, err := ParseConnConfig("")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Host != "db.example" || cfg.Port != 6543 || cfg.User != "alice" || cfg.Database != "app" || cfg.Password != "pw" {
		t.Errorf("environment not applied: %+v", cfg.Config)
	}
	if cfg.TLSConfig != nil {
		t.Error("PGSSLMODE=disable not applied")
	}
	if got := cfg.RuntimeParams["application_name"]; got != DefaultApplicationName {
		t.Errorf("application_name = %q, want %q", got, DefaultApplicationName)
	}
	if got, want := DescribeConfig(&cfg.Config), "host=db.example port=6543 user=alice dbname=app"; got != want {
		t.Errorf("DescribeConfig = %q, want %q", got, want)
	}

	cfg, err = ParseConnConfig("application_name=mine port=7000")
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.RuntimeParams["application_name"]; got != "mine" {
		t.Errorf("explicit application_name overridden: %q", got)
	}
	if cfg.Port != 7000 || cfg.Host != "db.example" {
		t.Errorf("string should override environment per key: %+v", cfg.Config)
	}
}

func TestDescribeConfigFallbacks(t *testing.T) {
	cfg := &pgconn.Config{Host: "a", Port: 5432, User: "u", Database: "d", Password: "pw",
		Fallbacks: []*pgconn.FallbackConfig{{Host: "a", Port: 5432}, {Host: "b", Port: 5433}}}
	if got, want := DescribeConfig(cfg), "host=a port=5432,b:5433 user=u dbname=d"; got != want {
		t.Errorf("DescribeConfig = %q, want %q", got, want)
	}
}
