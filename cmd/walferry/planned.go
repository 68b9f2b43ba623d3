package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

// plannedCommands are the commands of DESIGN.md that this build does not
// have yet. They are listed so scripts and users see the whole interface,
// and they refuse to run (exit 2) instead of pretending.
func plannedCommands() []*cli.Command {
	planned := []struct {
		name, usage, usageText string
		aliases                []string
	}{
		{"switchover", "demote this site's primary and promote a standby in one command (today: walferry demote, then walferry promote)", "walferry switchover --to INSTANCE", nil},
	}
	cmds := make([]*cli.Command, 0, len(planned))
	for _, p := range planned {
		name := p.name
		cmds = append(cmds, &cli.Command{
			Name:            name,
			Aliases:         p.aliases,
			Usage:           p.usage + " (not in this build yet)",
			UsageText:       p.usageText,
			Category:        "planned (not in this build yet)",
			SkipFlagParsing: true,
			Action: func(*cli.Context) error {
				return usage(fmt.Errorf("walferry %s is not in this build yet: it is planned (see README.md, \"Status\"); nothing was done", name))
			},
		})
	}
	return cmds
}
