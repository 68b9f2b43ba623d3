package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/walferry/walferry/archive/hookproto"
	"github.com/walferry/walferry/internal/pg/pgcontrol"
)

// errWalferry marks the reasons walferry-hook hands a call to walferry:
// whatever it does not fully understand.
var errWalferry = errors.New("walferry runs this call")

func runWalferry(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errWalferry}, args...)...)
}

// kind is how a flag takes its value, as urfave/cli's flags of the same
// kind do in walferry.
type kind int

const (
	stringFlag kind = iota
	intFlag
	boolFlag
)

// flagDef is a flag of walferry's hooks: its names and the environment
// variable walferry reads for it.
type flagDef struct {
	name, alias, env string
	kind             kind
}

// commonFlags are the flags every walferry command takes (cmd/walferry
// app.go, commonFlags); hookFlags those of each hook (archive.go).
// TestFlagsMatchWalferry compares both with walferry's --help.
var (
	commonFlags = []flagDef{
		{"repo", "r", "WALFERRY_REPO", stringFlag},
		{"config", "c", "WALFERRY_CONFIG", stringFlag},
		{"pgdata", "D", "PGDATA", stringFlag},
		{"pg-conn", "", "WALFERRY_PG_CONN", stringFlag},
		{"compression", "", "WALFERRY_COMPRESSION", stringFlag},
		{"encryption-passphrase-file", "", "WALFERRY_ENCRYPTION_PASSPHRASE_FILE", stringFlag},
		{"concurrency", "", "WALFERRY_CONCURRENCY", intFlag},
		{"log-format", "", "WALFERRY_LOG_FORMAT", stringFlag},
		{"log-level", "", "WALFERRY_LOG_LEVEL", stringFlag},
	}
	hookFlags = map[string][]flagDef{
		"archive-push": {
			{"ahead", "", "WALFERRY_PUSH_AHEAD", intFlag},
			{"spool-dir", "", "WALFERRY_SPOOL_DIR", stringFlag},
			{"socket", "", "WALFERRY_SOCKET", stringFlag},
		},
		"archive-get": {
			{"prefetch", "", "WALFERRY_PREFETCH", intFlag},
			{"spool-dir", "", "WALFERRY_SPOOL_DIR", stringFlag},
			{"socket", "", "WALFERRY_SOCKET", stringFlag},
			{"partial", "", "WALFERRY_ARCHIVE_PARTIAL", boolFlag},
		},
	}
	// hookNames maps the hooks' names and aliases to their names.
	hookNames = map[string]string{
		"archive-push": "archive-push", "wal-push": "archive-push",
		"archive-get": "archive-get", "wal-fetch": "archive-get",
	}
)

// Defaults of the settings walferry-hook reads (internal/config.Defaults).
const (
	defaultLogFormat = "auto"
	defaultLogLevel  = "warn"
)

// call is a hook call walferry-hook hands to the daemon itself.
type call struct {
	hook       string // "archive-push" or "archive-get"
	path       string // archive-push: %p
	name, dest string // archive-get: %f, %p
	partial    bool   // archive-get --partial
	socket     string
	dataDir    string // absolute
	jsonErrors bool   // the failure is one JSON record (--log-format)
}

// parseCall reads a hook's command line (os.Args without the program
// name) and environment the way walferry does: flags after the command,
// Go flag syntax (-f, --f, -f=v, --f v, "--" ending the flags), a flag on
// the command line winning over its environment variable. Any error wraps
// errWalferry: walferry must run the call, because it is not a hook, is
// not for the daemon, or holds something walferry-hook does not check
// the way walferry would.
func parseCall(args []string, lookupEnv func(string) (string, bool)) (*call, error) {
	if len(args) == 0 {
		return nil, runWalferry("no command")
	}
	hook, ok := hookNames[args[0]]
	if !ok {
		return nil, runWalferry("%q is not a hook", args[0])
	}
	defs := map[string]flagDef{}
	for _, d := range append(append([]flagDef(nil), commonFlags...), hookFlags[hook]...) {
		defs[d.name] = d
		if d.alias != "" {
			defs[d.alias] = d
		}
	}

	given := map[string]string{} // by flag name, the last value on the command line
	rest := args[1:]
	for len(rest) > 0 {
		s := rest[0]
		if len(s) < 2 || s[0] != '-' {
			break
		}
		rest = rest[1:]
		if s == "--" {
			break
		}
		name := s[1:]
		if name[0] == '-' {
			name = name[1:]
		}
		if name == "" || name[0] == '-' || name[0] == '=' {
			return nil, runWalferry("bad flag syntax %q", s)
		}
		name, value, hasValue := strings.Cut(name, "=")
		d, ok := defs[name]
		if !ok {
			return nil, runWalferry("flag %q", s)
		}
		switch {
		case d.kind == boolFlag && !hasValue:
			value = "true"
		case !hasValue && len(rest) == 0:
			return nil, runWalferry("flag %q without its value", s)
		case !hasValue:
			value, rest = rest[0], rest[1:]
		}
		if err := checkValue(d, value, false); err != nil {
			return nil, err
		}
		given[d.name] = value
	}
	// walferry parses every environment variable of the command's flags,
	// given on the command line or not.
	for _, d := range defs {
		if v, ok := lookupEnv(d.env); ok {
			if err := checkValue(d, v, true); err != nil {
				return nil, err
			}
		}
	}
	setting := func(name, def string) string {
		if v, ok := given[name]; ok {
			return v
		}
		if v, ok := lookupEnv(defs[name].env); ok {
			return v
		}
		return def
	}

	c := &call{hook: hook, socket: setting("socket", "")}
	switch {
	case setting("config", "") != "":
		return nil, runWalferry("a configuration file (walferry-hook does not read YAML)")
	case c.socket == "":
		return nil, runWalferry("no daemon socket")
	}
	switch setting("log-format", defaultLogFormat) {
	case "json":
		c.jsonErrors = true
	case "auto":
		c.jsonErrors = os.Getenv("KUBERNETES_SERVICE_HOST") != ""
	case "text":
	default:
		return nil, runWalferry("log format %q", setting("log-format", ""))
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(setting("log-level", defaultLogLevel))); err != nil {
		return nil, runWalferry("log level: %v", err)
	}
	if hook == "archive-get" {
		// An empty WALFERRY_ARCHIVE_PARTIAL is false, as in urfave/cli.
		c.partial, _ = strconv.ParseBool(setting("partial", "false"))
	}

	for _, a := range rest {
		if strings.HasPrefix(a, "-") {
			return nil, runWalferry("argument %q", a)
		}
	}
	switch {
	case hook == "archive-push" && len(rest) == 1:
		c.path = rest[0]
	case hook == "archive-get" && len(rest) == 2:
		c.name, c.dest = rest[0], rest[1]
	default:
		return nil, runWalferry("%d arguments", len(rest))
	}

	// PostgreSQL runs its hooks in the data directory.
	dir := setting("pgdata", "")
	if dir == "" {
		wd, err := os.Getwd()
		if err != nil {
			return nil, runWalferry("working directory: %v", err)
		}
		dir = wd
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, runWalferry("data directory: %v", err)
	}
	c.dataDir = dir
	return c, nil
}

// checkValue parses a flag's value as walferry does: Go's flag package on
// the command line, urfave/cli for environment variables (where an empty
// value leaves an int flag unset and makes a bool one false).
func checkValue(d flagDef, v string, fromEnv bool) error {
	var err error
	switch {
	case fromEnv && v == "":
	case d.kind == intFlag && fromEnv:
		_, err = strconv.ParseInt(v, 0, 64)
	case d.kind == intFlag:
		_, err = strconv.ParseInt(v, 0, strconv.IntSize)
	case d.kind == boolFlag:
		_, err = strconv.ParseBool(v)
	}
	if err != nil {
		return runWalferry("--%s %q: %v", d.name, v, err)
	}
	return nil
}

// identity reads the identity of the cluster of c.dataDir. A data
// directory walferry would not accept (unreadable, corrupt, an invalid
// segment size: walferry exits 7 or 1 naming it) is walferry's to report.
func (c *call) identity() (hookproto.Client, error) {
	id, err := pgcontrol.ReadIdentity(c.dataDir)
	if err != nil {
		return hookproto.Client{}, runWalferry("%v", err)
	}
	// pg.NewWALSegmentSize: a power of two between 1 MiB and 1 GiB.
	if s := id.WALSegmentSize; s < 1<<20 || s > 1<<30 || s&(s-1) != 0 {
		return hookproto.Client{}, runWalferry("WAL segment size %d", s)
	}
	return hookproto.Client{Socket: c.socket, DataDir: c.dataDir, SystemID: id.SystemIdentifier,
		PGMajor: id.Major, WALSegmentSize: id.WALSegmentSize}, nil
}
