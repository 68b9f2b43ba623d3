// Command walferry-hook is the small front of walferry's archive hooks:
// with "walferry daemon" serving the cluster it hands PostgreSQL's
// archive_command and restore_command calls to the daemon and exits with
// its answer as walferry would; in every other case it execs walferry with
// the same arguments. It links the standard library, the socket protocol
// (archive/hookproto) and the control file reader (internal/pg/pgcontrol)
// only, so a call costs a fraction of walferry's start-up. See helpText.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/walferry/walferry/archive/hookproto"
)

const helpText = `NAME
   walferry-hook - PostgreSQL's archive_command and restore_command in front
   of walferry daemon

SYNOPSIS
   walferry-hook archive-push [flags] <path>
   walferry-hook archive-get [flags] <name> <dest>

DESCRIPTION
   walferry-hook takes the same commands, arguments, flags and environment
   variables as "walferry archive-push" and "walferry archive-get" (see
   walferry archive-push --help). When walferry daemon serves the cluster on
   the socket given by --socket or WALFERRY_SOCKET, walferry-hook hands it the
   call and exits with its answer, exactly as walferry would; it links
   nothing but the socket protocol and the control file reader, so a call
   costs about a third of walferry's time and CPU.

      archive_command = 'walferry-hook archive-push %p'
      restore_command = 'walferry-hook archive-get %f %p'

   with WALFERRY_SOCKET=/run/walferry/walferry.sock and the repository
   (WALFERRY_REPO) in the server's environment.

WHEN IT RUNS WALFERRY
   In every other case it replaces itself (exec) with the full walferry
   binary, with the same arguments and environment, so a call never does
   worse than walferry itself would:
     - no socket configured (no --socket, WALFERRY_SOCKET unset or empty);
     - the daemon does not answer (not started, killed, socket missing,
       connection lost before the answer) or refuses the request as
       "unsupported" (an older daemon);
     - a configuration file (--config, WALFERRY_CONFIG): walferry-hook does
       not read YAML;
     - anything it does not understand: another command, a flag before the
       command, an unknown flag, --help after the command, a value it cannot
       parse, a wrong number of arguments, a data directory whose control
       file it cannot read.
   walferry is WALFERRY_BIN when set, else the walferry next to
   walferry-hook, else the one in PATH. The settings only walferry's own work
   uses (--repo, --compression, --ahead, --prefetch, --spool-dir, ...) are
   passed on, not checked: walferry checks them when it runs.

EXIT STATUS
   As walferry's hooks: 0 when the daemon did the work. archive-get exits 1
   for every failure, printing nothing when the file is not archived.
   archive-push exits with walferry's codes (3 store unreachable, 4 access
   denied, 5 repository of another cluster or not initialized, or the name
   archived with other content, 6 corrupt object, 1 anything else), never
   above 125. A failure prints one line on stderr (a JSON record with
   --log-format json, or auto in Kubernetes). SIGINT, SIGTERM and SIGQUIT
   make it exit 1 (the daemon stops the work), never die by the signal;
   SIGPIPE is ignored.
`

func main() {
	args := os.Args[1:]
	if len(args) == 0 {
		os.Stderr.WriteString(helpText)
		os.Exit(2)
	}
	switch args[0] {
	case "--help", "-help", "-h", "help":
		os.Stdout.WriteString(helpText)
		os.Exit(0)
	}
	c, err := parseCall(args, os.LookupEnv)
	if err != nil {
		os.Exit(execWalferry())
	}
	os.Exit(c.run())
}

// run hands the call to the daemon and returns the exit status walferry
// would give its answer; it execs walferry when the daemon gives none.
func (c *call) run() int {
	// PostgreSQL signals its hooks' process group; death by a signal would
	// make it restart the archiver or abort recovery.
	signal.Ignore(syscall.SIGPIPE)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGQUIT)
	defer stop()

	client, err := c.identity()
	if err != nil {
		return execWalferry()
	}
	var resp hookproto.Response
	if c.hook == "archive-push" {
		resp, err = client.Push(ctx, c.path)
	} else {
		resp, err = client.Get(ctx, c.name, c.dest, c.partial)
	}
	switch {
	case err != nil && ctx.Err() != nil:
		// Interrupted: the daemon saw the connection close and stops.
		c.fail(err.Error(), hookproto.ExitFailure)
		return hookproto.ExitFailure
	case err != nil:
		// No answer (or a path walferry-hook could not resolve).
		return execWalferry()
	}
	switch resp.Status {
	case hookproto.StatusOK:
		return hookproto.ExitOK
	case hookproto.StatusNotArchived:
		// How recovery learns where the archive ends: no output.
		return hookproto.ExitFailure
	}
	code := hookproto.ExitFailure
	if c.hook == "archive-push" {
		code = hookproto.ClassExitCode(resp.Class)
	}
	c.fail((&hookproto.DaemonError{Class: resp.Class, Message: resp.Message, Socket: c.socket}).Error(), code)
	return code
}

// fail prints the one line a failed call leaves, as walferry does: plain
// text, or a JSON record when logging JSON.
func (c *call) fail(msg string, code int) {
	if c.jsonErrors {
		slog.New(slog.NewJSONHandler(os.Stderr, nil)).Error("command failed", "err", msg, "exit_code", code)
		return
	}
	fmt.Fprintf(os.Stderr, "walferry-hook: error: %s\n", msg)
}

// execWalferry replaces this process with walferry, with the same
// arguments and environment. It returns only when that fails, with the
// status to exit with.
func execWalferry() int {
	bin, err := walferryBinary()
	if err == nil {
		err = syscall.Exec(bin, append([]string{bin}, os.Args[1:]...), os.Environ())
	}
	fmt.Fprintf(os.Stderr, "walferry-hook: error: cannot run walferry: %v\n", err)
	return hookproto.ExitFailure
}

// walferryBinary finds walferry: WALFERRY_BIN, else next to this
// executable, else in PATH. It never returns this executable itself.
func walferryBinary() (string, error) {
	self, selfErr := os.Executable()
	bin := os.Getenv("WALFERRY_BIN")
	if bin == "" && selfErr == nil {
		if p := filepath.Join(filepath.Dir(self), "walferry"); isExecutable(p) {
			bin = p
		}
	}
	if bin == "" {
		p, err := exec.LookPath("walferry")
		if err != nil {
			return "", fmt.Errorf("not next to walferry-hook nor in PATH, and WALFERRY_BIN is unset: %w", err)
		}
		bin = p
	}
	if selfErr == nil {
		a, aerr := os.Stat(bin)
		b, berr := os.Stat(self)
		if aerr == nil && berr == nil && os.SameFile(a, b) {
			return "", fmt.Errorf("%s is walferry-hook itself; point WALFERRY_BIN at walferry", bin)
		}
	}
	return bin, nil
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}
