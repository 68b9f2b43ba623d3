// Command walferry ships PostgreSQL WAL and base backups to object storage
// and restores them. This package is wiring only: flags become options,
// options go to domain packages, errors come back as exit codes.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// Set by the linker: -X main.version=... -X main.commit=...
var (
	version = "dev"
	commit  = "unknown"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	a := newApp(os.Stdout, os.Stderr, buildInfo{Version: version, Commit: commit})
	err := a.Run(ctx, os.Args)
	stop()
	code := exitCode(err)
	if err != nil {
		a.reportError(err, code)
	}
	os.Exit(code)
}

// fail is used by reportError when even logging is not possible.
func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "walferry: "+format+"\n", args...)
}
