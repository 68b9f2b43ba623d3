package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestCmdIsWiring: cmd/walferry holds flags, help, option building and the
// exit-code mapping; opening stores and repositories, retry loops, waits
// and HTTP servers live in importable packages (internal/repos,
// storage/retry, internal/statusserver), where the agent reuses them.
func TestCmdIsWiring(t *testing.T) {
	forbiddenImports := map[string]string{
		"net":      "listening belongs in internal/statusserver",
		"net/http": "HTTP servers belong in internal/statusserver",
		"github.com/prometheus/client_golang/prometheus/promhttp": "metrics serving belongs in internal/statusserver",
		"github.com/walferry/walferry/storage/s3":                 "backends are opened by storage/open through internal/repos",
		"github.com/walferry/walferry/storage/gcs":                "backends are opened by storage/open through internal/repos",
		"github.com/walferry/walferry/storage/azure":              "backends are opened by storage/open through internal/repos",
		"github.com/walferry/walferry/storage/fs":                 "backends are opened by storage/open through internal/repos",
		"github.com/walferry/walferry/storage/limit":              "policies are applied by storage/open",
	}
	forbiddenCalls := map[string]string{
		"open.Store":     "open repositories with internal/repos",
		"repo.Open":      "open repositories with internal/repos",
		"retry.Do":       "retry inside the domain packages",
		"time.After":     "no waiting loops in cmd",
		"time.NewTimer":  "no waiting loops in cmd",
		"time.Sleep":     "no waiting loops in cmd",
		"time.NewTicker": "no waiting loops in cmd",
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		src, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		f, err := parser.ParseFile(fset, name, src, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if why, bad := forbiddenImports[path]; bad {
				t.Errorf("%s imports %s: %s", name, path, why)
			}
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if x, ok := sel.X.(*ast.Ident); ok {
				if why, bad := forbiddenCalls[x.Name+"."+sel.Sel.Name]; bad {
					t.Errorf("%s: %s calls %s.%s: %s", name, fset.Position(call.Pos()), x.Name, sel.Sel.Name, why)
				}
			}
			return true
		})
	}
}
