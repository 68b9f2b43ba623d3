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
	a := newApp(os.Stdout, os.Stderr, buildInfo{Version: version, Commit: commit})
	signals := []os.Signal{os.Interrupt, syscall.SIGTERM}
	if a.hookName(os.Args) != "" {
		// PostgreSQL signals its hooks' process group with SIGINT, SIGTERM
		// and SIGQUIT; death by any signal would abort recovery, so the
		// hooks catch them all and exit 1 (exit.go). A closed stderr must
		// not kill them either.
		signals = append(signals, syscall.SIGQUIT)
		signal.Ignore(syscall.SIGPIPE)
	}
	ctx, stop := signal.NotifyContext(context.Background(), signals...)
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
