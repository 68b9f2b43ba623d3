package pgtest

import (
	"net"
	"strconv"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// FakeServer plays the server side of one connection, for unit tests of
// protocol code without PostgreSQL: it listens on 127.0.0.1, accepts one
// connection, answers the startup (trust authentication, server_version
// version: "15.0") and hands the connection to serve. It returns a connection string
// for it and a channel that gets serve's error (or the startup's) once.
// The listener and the connection are closed when t ends.
func FakeServer(t testing.TB, version string, serve func(*pgproto3.Backend) error) (connString string, done <-chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	errs := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			errs <- err
			return
		}
		defer c.Close()
		be := pgproto3.NewBackend(c, c)
		if _, err := be.ReceiveStartupMessage(); err != nil {
			errs <- err
			return
		}
		be.Send(&pgproto3.AuthenticationOk{})
		be.Send(&pgproto3.ParameterStatus{Name: "server_version", Value: version})
		be.Send(&pgproto3.BackendKeyData{ProcessID: 1, SecretKey: []byte{0, 0, 0, 1}})
		be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		if err := be.Flush(); err != nil {
			errs <- err
			return
		}
		errs <- serve(be)
	}()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	return "host=127.0.0.1 port=" + port + " user=" + Superuser + " sslmode=disable", errs
}
