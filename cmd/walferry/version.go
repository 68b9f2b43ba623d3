package main

import (
	"fmt"
	"runtime"

	"github.com/urfave/cli/v2"

	"github.com/walferry/walferry/internal/codec"
)

func (a *app) versionCommand() *cli.Command {
	return &cli.Command{
		Name:      "version",
		Usage:     "print walferry's version, commit, Go version and zstd implementation",
		UsageText: "walferry version [--json]",
		Flags:     []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print a JSON object"}},
		Action: func(c *cli.Context) error {
			b := a.build
			b.Go = runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH
			b.Zstd = codec.ZstdImplementation()
			if c.Bool("json") {
				return a.printJSON(b)
			}
			_, err := fmt.Fprintf(a.stdout, "walferry %s\ncommit %s\n%s\nzstd %s\n", b.Version, b.Commit, b.Go, b.Zstd)
			return err
		},
	}
}
