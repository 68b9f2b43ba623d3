// Command vulndb builds a local Go vulnerability database for
// `govulncheck -db file://DIR` from the OSV entries that the Go module
// golang.org/x/vulndb ships under data/osv, so that `make vulncheck` runs
// without reaching vuln.go.dev: only the Go module proxy.
//
// The layout is the one govulncheck reads from a file:// database
// (https://go.dev/security/vuln/database#api):
//
//	DIR/index/db.json       {"modified": T}, T the newest entry's modification
//	DIR/index/modules.json  [{"path": M, "vulns": [{"id", "modified", "fixed"}]}], sorted
//	DIR/index/vulns.json    [{"id", "modified", "aliases"}], sorted by id
//	DIR/ID/GO-YYYY-NNNN.json every OSV entry, as shipped
//
// The entries in the module carry a zero "modified" time (the deployed
// database stamps it from the repository's history); the index then uses
// the time of the module version instead, so db.json says how old the data is.
//
// Usage:
//
//	go run ./tools/vulndb -module golang.org/x/vulndb@VERSION -out DIR
//	go run ./tools/vulndb -osv DIR/data/osv -modified 2026-11-05T23:49:57Z -out DIR
//	govulncheck -format json ... | go run ./tools/vulndb findings -accept FILE
//
// findings reads govulncheck's JSON stream and fails when code of ours
// calls a vulnerable function, unless FILE accepts that finding: one line
// per vulnerability, its ID then why it is accepted (# starts a comment).
//
// DIR is replaced as a whole: the new database is written next to it and
// renamed into place, so a reader never sees half of one.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"golang.org/x/mod/semver"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "vulndb:", err)
		stop()
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	if len(args) > 0 && args[0] == "findings" {
		return findings(os.Stdin, os.Stdout, args[1:])
	}
	fl := flag.NewFlagSet("vulndb", flag.ContinueOnError)
	module := fl.String("module", "", "module@version holding data/osv, fetched with `go mod download` (e.g. golang.org/x/vulndb@v0.0.0-20261105234957-e22db6528018)")
	osvDir := fl.String("osv", "", "directory of OSV entries (instead of -module)")
	modified := fl.String("modified", "", "RFC 3339 time for entries without one (with -osv; -module uses the version's time)")
	out := fl.String("out", "", "database directory to write (replaced)")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if *out == "" || (*module == "") == (*osvDir == "") {
		return errors.New("usage: vulndb (-module PATH@VERSION | -osv DIR [-modified TIME]) -out DIR")
	}
	var fallback time.Time
	if *module != "" {
		dir, t, err := download(ctx, *module)
		if err != nil {
			return err
		}
		*osvDir, fallback = filepath.Join(dir, "data", "osv"), t
	} else if *modified != "" {
		t, err := time.Parse(time.RFC3339, *modified)
		if err != nil {
			return fmt.Errorf("-modified: %w", err)
		}
		fallback = t
	}
	n, err := Build(*osvDir, *out, fallback)
	if err != nil {
		return err
	}
	fmt.Printf("vulndb: %d entries from %s -> %s\n", n, *osvDir, *out)
	return nil
}

// download fetches module@version through the module proxy and returns
// its directory in the module cache and the version's time.
func download(ctx context.Context, module string) (string, time.Time, error) {
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", module)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	data, err := cmd.Output()
	var info struct {
		Dir   string
		Info  string
		Error string
	}
	if jerr := json.Unmarshal(data, &info); jerr == nil && info.Error != "" {
		return "", time.Time{}, fmt.Errorf("go mod download %s: %s", module, info.Error)
	}
	if err != nil {
		return "", time.Time{}, fmt.Errorf("go mod download %s: %w: %s", module, err, strings.TrimSpace(stderr.String()))
	}
	if info.Dir == "" {
		return "", time.Time{}, fmt.Errorf("go mod download %s: no directory in its answer", module)
	}
	raw, err := os.ReadFile(info.Info)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("read version info of %s: %w", module, err)
	}
	var vi struct{ Time time.Time }
	if err := json.Unmarshal(raw, &vi); err != nil {
		return "", time.Time{}, fmt.Errorf("parse version info %s: %w", info.Info, err)
	}
	return info.Dir, vi.Time, nil
}

// entry is the part of an OSV entry the index needs.
type entry struct {
	ID       string    `json:"id"`
	Modified time.Time `json:"modified"`
	Aliases  []string  `json:"aliases,omitempty"`
	Affected []struct {
		Package struct {
			Name      string `json:"name"`
			Ecosystem string `json:"ecosystem"`
		} `json:"package"`
		Ranges []osvRange `json:"ranges"`
	} `json:"affected"`
}

type osvRange struct {
	Type   string `json:"type"`
	Events []struct {
		Introduced string `json:"introduced,omitempty"`
		Fixed      string `json:"fixed,omitempty"`
	} `json:"events"`
}

type dbMeta struct {
	Modified time.Time `json:"modified"`
}

type moduleMeta struct {
	Path  string       `json:"path"`
	Vulns []moduleVuln `json:"vulns"`
}

type moduleVuln struct {
	ID       string    `json:"id"`
	Modified time.Time `json:"modified"`
	Fixed    string    `json:"fixed,omitempty"`
}

type vulnMeta struct {
	ID       string    `json:"id"`
	Modified time.Time `json:"modified"`
	Aliases  []string  `json:"aliases,omitempty"`
}

// idPattern keeps an entry's file name inside ID/.
var idPattern = regexp.MustCompile(`^GO-\d{4}-\d{4,}$`)

// Build writes the database for the OSV entries in osvDir (files *.json)
// to outDir and returns how many entries it holds. Entries whose modified
// time is zero get fallback.
func Build(osvDir, outDir string, fallback time.Time) (int, error) {
	files, err := filepath.Glob(filepath.Join(osvDir, "*.json"))
	if err != nil {
		return 0, err
	}
	if len(files) == 0 {
		return 0, fmt.Errorf("no OSV entries (*.json) in %s", osvDir)
	}
	tmp := outDir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return 0, err
	}
	if err := os.MkdirAll(filepath.Join(tmp, "ID"), 0o755); err != nil {
		return 0, err
	}
	if err := os.MkdirAll(filepath.Join(tmp, "index"), 0o755); err != nil {
		return 0, err
	}

	var db dbMeta
	modules := map[string]*moduleMeta{}
	vulns := map[string]vulnMeta{}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			return 0, err
		}
		var e entry
		if err := json.Unmarshal(raw, &e); err != nil {
			return 0, fmt.Errorf("parse %s: %w", f, err)
		}
		if !idPattern.MatchString(e.ID) {
			return 0, fmt.Errorf("%s: unexpected id %q", f, e.ID)
		}
		if _, dup := vulns[e.ID]; dup {
			return 0, fmt.Errorf("%s: id %s appears twice", f, e.ID)
		}
		if e.Modified.IsZero() {
			e.Modified = fallback
		}
		if e.Modified.After(db.Modified) {
			db.Modified = e.Modified
		}
		vulns[e.ID] = vulnMeta{ID: e.ID, Modified: e.Modified, Aliases: e.Aliases}
		// An entry may list a module more than once (one item per set of
		// packages): the index names it once, with the ranges of all.
		var paths []string
		ranges := map[string][]osvRange{}
		for _, a := range e.Affected {
			path := a.Package.Name
			if path == "" {
				return 0, fmt.Errorf("%s: an affected package without a name", f)
			}
			if _, seen := ranges[path]; !seen {
				paths = append(paths, path)
			}
			ranges[path] = append(ranges[path], a.Ranges...)
		}
		for _, path := range paths {
			m := modules[path]
			if m == nil {
				m = &moduleMeta{Path: path}
				modules[path] = m
			}
			m.Vulns = append(m.Vulns, moduleVuln{ID: e.ID, Modified: e.Modified, Fixed: LatestFixed(ranges[path])})
		}
		if err := os.WriteFile(filepath.Join(tmp, "ID", e.ID+".json"), raw, 0o644); err != nil {
			return 0, err
		}
	}

	moduleList := make([]*moduleMeta, 0, len(modules))
	for _, m := range modules {
		sort.Slice(m.Vulns, func(i, j int) bool { return m.Vulns[i].ID < m.Vulns[j].ID })
		moduleList = append(moduleList, m)
	}
	sort.Slice(moduleList, func(i, j int) bool { return moduleList[i].Path < moduleList[j].Path })
	vulnList := make([]vulnMeta, 0, len(vulns))
	for _, v := range vulns {
		vulnList = append(vulnList, v)
	}
	sort.Slice(vulnList, func(i, j int) bool { return vulnList[i].ID < vulnList[j].ID })

	for name, v := range map[string]any{"db.json": db, "modules.json": moduleList, "vulns.json": vulnList} {
		data, err := json.Marshal(v)
		if err != nil {
			return 0, err
		}
		if err := os.WriteFile(filepath.Join(tmp, "index", name), data, 0o644); err != nil {
			return 0, err
		}
	}
	if err := os.RemoveAll(outDir); err != nil {
		return 0, err
	}
	if err := os.Rename(tmp, outDir); err != nil {
		return 0, err
	}
	return len(vulnList), nil
}

// LatestFixed returns the version (without "v") from which no range of an
// affected module is vulnerable any more, or "" when there is none: some
// range has no fix, or reintroduces the flaw after its last fix. govulncheck
// skips an entry for a module version at or above it, so a wrong answer
// would hide a finding; "" only costs reading the entry.
func LatestFixed(ranges []osvRange) string {
	latest := ""
	for _, r := range ranges {
		if r.Type != "SEMVER" {
			return ""
		}
		fixed, lastIntroduced := "", ""
		for _, e := range r.Events {
			if e.Fixed != "" && (fixed == "" || less(fixed, e.Fixed)) {
				fixed = e.Fixed
			}
			if e.Introduced != "" && (lastIntroduced == "" || less(lastIntroduced, e.Introduced)) {
				lastIntroduced = e.Introduced
			}
		}
		if fixed == "" || (lastIntroduced != "" && lastIntroduced != "0" && !less(lastIntroduced, fixed)) {
			return ""
		}
		if latest == "" || less(latest, fixed) {
			latest = fixed
		}
	}
	return latest
}

// less compares two OSV versions, which are semver without the "v".
func less(a, b string) bool { return semver.Compare("v"+a, "v"+b) < 0 }

// findings reports the vulnerabilities govulncheck found in called code
// (a finding whose trace names a function), and fails on any that the
// accept file does not list. Accepted ones that were not found are named
// too, so the list does not outlive its reasons.
func findings(in io.Reader, out io.Writer, args []string) error {
	fl := flag.NewFlagSet("vulndb findings", flag.ContinueOnError)
	acceptFile := fl.String("accept", "", "file of accepted vulnerability IDs, one per line with the reason")
	if err := fl.Parse(args); err != nil {
		return err
	}
	accepted := map[string]string{}
	if *acceptFile != "" {
		data, err := os.ReadFile(*acceptFile)
		if err != nil {
			return err
		}
		for _, line := range strings.Split(string(data), "\n") {
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			id, why, _ := strings.Cut(line, " ")
			accepted[id] = strings.TrimSpace(why)
		}
	}
	type frame struct {
		Module, Version, Package, Function string
	}
	var msg struct {
		Finding *struct {
			OSV          string  `json:"osv"`
			FixedVersion string  `json:"fixed_version"`
			Trace        []frame `json:"trace"`
		} `json:"finding"`
	}
	called := map[string]string{} // id -> where
	dec := json.NewDecoder(in)
	for {
		msg.Finding = nil
		if err := dec.Decode(&msg); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return fmt.Errorf("read govulncheck -format json: %w", err)
		}
		f := msg.Finding
		if f == nil || len(f.Trace) == 0 || f.Trace[0].Function == "" {
			continue // imported or required only: not called
		}
		if _, seen := called[f.OSV]; !seen {
			top := f.Trace[0]
			called[f.OSV] = fmt.Sprintf("%s.%s in %s@%s, fixed in %s", top.Package, top.Function, top.Module, top.Version, f.FixedVersion)
		}
	}
	ids := make([]string, 0, len(called))
	for id := range called {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var bad []string
	for _, id := range ids {
		if why, ok := accepted[id]; ok {
			fmt.Fprintf(out, "accepted: %s (%s): %s\n", id, called[id], why)
			continue
		}
		fmt.Fprintf(out, "VULNERABLE: %s: %s (https://pkg.go.dev/vuln/%s)\n", id, called[id], id)
		bad = append(bad, id)
	}
	for id := range accepted {
		if _, ok := called[id]; !ok {
			fmt.Fprintf(out, "no longer found, remove it from the accept file: %s\n", id)
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("%d vulnerabilities in called code: %s", len(bad), strings.Join(bad, ", "))
	}
	fmt.Fprintf(out, "vulncheck: no vulnerability in called code (%d accepted)\n", len(called))
	return nil
}
