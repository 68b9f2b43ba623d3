// Package testenv tells integration tests where the real services started by
// scripts/services.sh live. A missing service skips the test on a developer's
// machine and fails it when WALFERRY_TEST_REQUIRE_SERVICES=1 (make test and
// CI set it), so CI can never pass with a backend silently skipped.
package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"
)

// RequireServices reports whether missing services must fail tests.
func RequireServices() bool {
	return os.Getenv("WALFERRY_TEST_REQUIRE_SERVICES") == "1" || os.Getenv("CI") == "true"
}

// lookup returns the values of vars, or skips/fails the test when one is unset.
func lookup(t testing.TB, service string, vars ...string) []string {
	t.Helper()
	out := make([]string, len(vars))
	for i, v := range vars {
		out[i] = os.Getenv(v)
		if out[i] == "" {
			msg := service + " is not running: " + v + " is unset (start it with: eval \"$(scripts/services.sh start)\")"
			if RequireServices() {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
	return out
}

// S3Env locates the MinIO server.
type S3Env struct {
	Endpoint  string // http://127.0.0.1:PORT
	AccessKey string
	SecretKey string
	Region    string
	Bucket    string // an existing bucket tests may write to
}

// S3 returns the MinIO server's coordinates.
func S3(t testing.TB) S3Env {
	v := lookup(t, "MinIO", "WALFERRY_TEST_S3_ENDPOINT", "WALFERRY_TEST_S3_ACCESS_KEY",
		"WALFERRY_TEST_S3_SECRET_KEY", "WALFERRY_TEST_S3_BUCKET")
	region := os.Getenv("WALFERRY_TEST_S3_REGION")
	if region == "" {
		region = "us-east-1"
	}
	return S3Env{Endpoint: v[0], AccessKey: v[1], SecretKey: v[2], Bucket: v[3], Region: region}
}

// GCSEnv locates fake-gcs-server.
type GCSEnv struct {
	EmulatorHost string // 127.0.0.1:PORT, for STORAGE_EMULATOR_HOST
	Bucket       string
}

// GCS returns fake-gcs-server's coordinates.
func GCS(t testing.TB) GCSEnv {
	v := lookup(t, "fake-gcs-server", "WALFERRY_TEST_GCS_EMULATOR_HOST", "WALFERRY_TEST_GCS_BUCKET")
	return GCSEnv{EmulatorHost: v[0], Bucket: v[1]}
}

// AzureEnv locates Azurite.
type AzureEnv struct {
	ConnectionString string
	Container        string
}

// Azure returns Azurite's coordinates.
func Azure(t testing.TB) AzureEnv {
	v := lookup(t, "Azurite", "WALFERRY_TEST_AZURE_CONNECTION_STRING", "WALFERRY_TEST_AZURE_CONTAINER")
	return AzureEnv{ConnectionString: v[0], Container: v[1]}
}

// PGBin returns the directory holding PostgreSQL 15's initdb, pg_ctl and postgres.
func PGBin(t testing.TB) string {
	if dir := os.Getenv("WALFERRY_TEST_PGBIN"); dir != "" {
		return dir
	}
	const debian = "/usr/lib/postgresql/15/bin"
	if _, err := os.Stat(debian + "/initdb"); err == nil {
		return debian
	}
	return lookup(t, "PostgreSQL 15", "WALFERRY_TEST_PGBIN")[0]
}

// UniquePrefix returns a fresh key prefix so tests sharing one bucket never
// see each other's objects.
func UniquePrefix(t testing.TB) string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return "test-" + hex.EncodeToString(b[:])
}

// Root skips t unless it runs as root (to give files to another owner),
// and fails it instead where every test must run (make test, CI: they run
// as root).
func Root(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if RequireServices() {
		t.Fatal("this test needs root (it gives files to another owner), and make test and CI run as root")
	}
	t.Skip("needs root to give files away")
}
