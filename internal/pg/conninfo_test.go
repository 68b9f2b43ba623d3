package pg

import (
	"strings"
	"testing"

	"github.com/walferry/walferry/internal/failure"
)

// clearLibpqEnv empties the PG* variables StandbyConnInfo reads, so the
// machine's environment does not leak into the expectations.
func clearLibpqEnv(t *testing.T) {
	t.Helper()
	for _, kw := range standbyKeywords {
		if kw.env != "" {
			t.Setenv(kw.env, "")
		}
	}
}

func TestStandbyConnInfo(t *testing.T) {
	clearLibpqEnv(t)
	tests := []struct {
		name, in, app, want string
	}{
		{"keywords", "host=primary.example port=5433 user=repl dbname=app sslmode=verify-full sslrootcert=/etc/tls/ca.crt",
			"site_b_0", "host=primary.example port=5433 user=repl sslmode=verify-full sslrootcert=/etc/tls/ca.crt application_name=site_b_0"},
		{"quoted values", `host = 'h1' user='my user' sslkey='/tls/it\'s.key'`, "",
			`host=h1 user='my user' sslkey='/tls/it\'s.key'`},
		{"uri", "postgres://repl@db.example:6543/app?sslmode=require&connect_timeout=10&application_name=x", "walferry_b",
			"host=db.example port=6543 user=repl sslmode=require connect_timeout=10 application_name=walferry_b"},
		{"uri several hosts and ipv6", "postgresql://[::1]:5433,h2/db?target_session_attrs=read-write", "",
			"host=::1,h2 port=5433, target_session_attrs=read-write"},
		{"uri escapes", "postgres://us%40er@%2Frun%2Fpostgresql/db", "",
			"host=/run/postgresql user=us@er"},
		{"passfile kept", "host=h passfile=/secrets/pgpass", "a",
			"host=h passfile=/secrets/pgpass application_name=a"},
		{"keepalives", "host=h keepalives=1 keepalives_idle=30 keepalives_interval=5 keepalives_count=3", "",
			"host=h keepalives=1 keepalives_idle=30 keepalives_interval=5 keepalives_count=3"},
		{"user application_name replaced", "host=h application_name=mine", "walferry_x", "host=h application_name=walferry_x"},
		{"empty", "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := StandbyConnInfo(tt.in, tt.app)
			if err != nil {
				t.Fatalf("StandbyConnInfo(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("StandbyConnInfo(%q)\n got %s\nwant %s", tt.in, got, tt.want)
			}
		})
	}
}

func TestStandbyConnInfoEnvironment(t *testing.T) {
	clearLibpqEnv(t)
	t.Setenv("PGPASSFILE", "/var/run/secrets/pgpass")
	t.Setenv("PGHOST", "from-env")
	t.Setenv("PGSSLMODE", "verify-ca")
	got, err := StandbyConnInfo("port=5432 user=repl", "app")
	if err != nil {
		t.Fatal(err)
	}
	want := "host=from-env port=5432 user=repl passfile=/var/run/secrets/pgpass sslmode=verify-ca application_name=app"
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	// What the string says wins over the environment.
	got, err = StandbyConnInfo("host=h passfile=/mine", "")
	if err != nil {
		t.Fatal(err)
	}
	if want := "host=h passfile=/mine sslmode=verify-ca"; got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestStandbyConnInfoRefusesPassword(t *testing.T) {
	clearLibpqEnv(t)
	for _, in := range []string{
		"host=h user=repl password=s3cret",
		"host=h password='s3 cret'",
		"postgres://repl:s3cret@h/db",
		"host=h sslpassword=s3cret",
	} {
		_, err := StandbyConnInfo(in, "")
		if err == nil {
			t.Fatalf("StandbyConnInfo(%q): no error", in)
		}
		if failure.Of(err) != failure.Usage {
			t.Errorf("StandbyConnInfo(%q): kind %v, want Usage", in, failure.Of(err))
		}
		if strings.Contains(err.Error(), "s3") {
			t.Errorf("error shows the password: %v", err)
		}
		if !strings.Contains(err.Error(), "passfile") {
			t.Errorf("error does not name the fix: %v", err)
		}
	}
}

func TestStandbyConnInfoInvalid(t *testing.T) {
	clearLibpqEnv(t)
	for _, in := range []string{
		"host",
		"host='unterminated",
		"hots=typo",
		"postgres://h/db?novalue",
		"postgres://[::1/db",
	} {
		if _, err := StandbyConnInfo(in, ""); err == nil || failure.Of(err) != failure.Usage {
			t.Errorf("StandbyConnInfo(%q) = %v, want a usage error", in, err)
		}
	}
}

func TestConnHostPort(t *testing.T) {
	clearLibpqEnv(t)
	tests := []struct{ in, want string }{
		{"host=db port=6543", "db:6543"},
		{"host=db,db2 port=6543,6544", "db:6543"},
		{"postgres://[::1]:5433/x", "[::1]:5433"},
		{"host=/run/postgresql", "/run/postgresql:5432"},
		{"hostaddr=10.0.0.1", "10.0.0.1:5432"},
		{"", "/var/run/postgresql:5432"},
		{"host='x", "(invalid connection string)"},
	}
	for _, tt := range tests {
		if got := ConnHostPort(tt.in); got != tt.want {
			t.Errorf("ConnHostPort(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	t.Setenv("PGHOST", "envhost")
	t.Setenv("PGPORT", "7000")
	if got, want := ConnHostPort("user=x"), "envhost:7000"; got != want {
		t.Errorf("ConnHostPort with PGHOST/PGPORT = %q, want %q", got, want)
	}
}

func FuzzStandbyConnInfo(f *testing.F) {
	f.Add("host=h port=1 user='a b'", "app")
	f.Add("postgres://u@[::1]:5/d?sslmode=require", "")
	f.Fuzz(func(t *testing.T, in, app string) {
		out, err := StandbyConnInfo(in, app)
		if err != nil {
			return
		}
		// What it writes parses back to the same line.
		again, err := StandbyConnInfo(out, app)
		if err != nil {
			t.Fatalf("output %q does not parse: %v", out, err)
		}
		if again != out {
			t.Fatalf("not stable: %q -> %q", out, again)
		}
	})
}
