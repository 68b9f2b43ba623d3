package pg

import (
	"strings"
	"testing"
)

// FuzzParsePIDFile: a postmaster.pid of any content parses or fails,
// never panics, and a parsed one has a positive PID.
func FuzzParsePIDFile(f *testing.F) {
	f.Add("4242\n/var/lib/postgresql/15/main\n1700000000\n5432\n/var/run/postgresql\n*\n  5432001         0\nready   \n")
	f.Add("4242\n/data\n1700000000\n5432\n")
	f.Add("-1\n\n\n\n")
	f.Add("99999999999999999999\n/x\n1\n5432\n")
	f.Fuzz(func(t *testing.T, s string) {
		pf, err := ParsePIDFile(s)
		if err == nil && pf.PID <= 0 {
			t.Fatalf("ParsePIDFile(%q) = PID %d without an error", s, pf.PID)
		}
	})
}

// FuzzParseConnConfig: a connection string of any content parses or
// fails, never panics, and an error never repeats a password.
func FuzzParseConnConfig(f *testing.F) {
	f.Add("host=/var/run/postgresql port=5432 user=postgres dbname=postgres")
	f.Add("postgres://u:secret-pw@h:5432/db?sslmode=disable")
	f.Add("host=x port=zz password=secret-pw")
	f.Add("host='unterminated password=secret-pw")
	f.Add("postgres://u:secret-pw@[::1/db")
	f.Fuzz(func(t *testing.T, s string) {
		_, err := ParseConnConfig(s)
		if err != nil && strings.Contains(s, "secret-pw") && strings.Contains(err.Error(), "secret-pw") {
			t.Fatalf("ParseConnConfig(%q): the error shows the password: %v", s, err)
		}
	})
}
