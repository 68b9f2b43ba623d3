package pg

import (
	"strings"
	"testing"
	"time"
)

func TestParsePIDFile(t *testing.T) {
	good := "4242\n/var/lib/postgresql/15/main\n1765000000\n5432\n/var/run/postgresql\n*\n  5432001         0\nready   \n"
	pf, err := ParsePIDFile(good)
	if err != nil {
		t.Fatal(err)
	}
	want := PIDFile{PID: 4242, DataDir: "/var/lib/postgresql/15/main", Started: time.Unix(1765000000, 0), Port: 5432,
		SocketDir: "/var/run/postgresql", ListenAddr: "*"}
	if pf != want {
		t.Errorf("ParsePIDFile: %+v, want %+v", pf, want)
	}
	if pf.Host() != "/var/run/postgresql" {
		t.Errorf("Host = %q", pf.Host())
	}
	for in, host := range map[string]string{
		"1\n/d\n1\n5432\n\n*\n":                 "127.0.0.1",
		"1\n/d\n1\n5432\n\n10.0.0.5,10.0.0.6\n": "10.0.0.5",
		"1\n/d\n1\n5432\n":                      "localhost",
	} {
		pf, err := ParsePIDFile(in)
		if err != nil || pf.Host() != host {
			t.Errorf("ParsePIDFile(%q).Host() = %q, %v; want %q", in, pf.Host(), err, host)
		}
	}
	for _, bad := range []string{
		"", "4242\n", "4242\n/d\n1765000000\n",
		"x\n/d\n1765000000\n5432\n", "4242\n/d\nnot-a-time\n5432\n", "4242\n/d\n1765000000\nport\n",
	} {
		if _, err := ParsePIDFile(bad); err == nil || !strings.Contains(err.Error(), "postmaster.pid") {
			t.Errorf("ParsePIDFile(%q): %v, want an error naming postmaster.pid", bad, err)
		}
	}
}
