package role

import (
	"context"
	"fmt"

	"github.com/walferry/walferry/internal/repo"
)

// record is the lineage record of the configured repositories. The first
// repository is the arbiter: its conditional create decides a race. The
// others receive a copy of each generation the arbiter accepted, so that
// their writers' checks fence alike.
type record struct{ repos []*repo.Repo }

func (r record) current(ctx context.Context) (repo.Generation, bool, error) {
	return r.repos[0].Lineage(ctx)
}

// take records g as the generation after prev. A lost race fails with an
// error matching repo.ErrLineageRace that names the winner.
func (r record) take(ctx context.Context, prev uint64, g repo.Generation) (repo.Generation, error) {
	won, err := r.repos[0].NextGeneration(ctx, prev, g)
	if err != nil {
		return repo.Generation{}, err
	}
	for _, m := range r.repos[1:] {
		cur, _, err := m.Lineage(ctx)
		if err != nil {
			return won, fmt.Errorf("%s is recorded in %s but not copied to %s: %w; run the command again to copy it", won, r.repos[0], m, err)
		}
		c := won
		if _, err := m.NextGeneration(ctx, cur.Number, c); err != nil {
			return won, fmt.Errorf("%s is recorded in %s but not copied to %s: %w; run the command again to copy it", won, r.repos[0], m, err)
		}
	}
	return won, nil
}
