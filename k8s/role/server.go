package role

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/jackc/pgx/v5"

	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/pg"
)

// checkpoint asks the running server for a checkpoint, so that the
// shutdown checkpoint that follows has little left to write.
func checkpoint(ctx context.Context, conn string) error {
	c, err := pg.Connect(ctx, conn)
	if err != nil {
		return err
	}
	defer c.Close(context.WithoutCancel(ctx))
	_, err = c.Exec(ctx, "CHECKPOINT")
	return err
}

// standbyPosition is where a standby is: what it replayed and received.
type standbyPosition struct {
	InRecovery bool
	Replay     pg.LSN
	Receive    pg.LSN
	// ReceiveTLI is the timeline streamed (0 when not streaming).
	ReceiveTLI pg.TimeLineID
}

func position(ctx context.Context, c *pgx.Conn) (standbyPosition, error) {
	var p standbyPosition
	var replay, receive *string
	var tli *int64
	err := c.QueryRow(ctx, `SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, pg_last_wal_receive_lsn()::text,
		(SELECT received_tli::bigint FROM pg_stat_wal_receiver)`).Scan(&p.InRecovery, &replay, &receive, &tli)
	if err != nil {
		return p, failure.Wrap(failure.Postgres, fmt.Errorf("read the standby's position: %w", err))
	}
	if replay != nil {
		if p.Replay, err = pg.ParseLSN(*replay); err != nil {
			return p, err
		}
	}
	if receive != nil {
		if p.Receive, err = pg.ParseLSN(*receive); err != nil {
			return p, err
		}
	}
	if tli != nil {
		p.ReceiveTLI = pg.TimeLineID(*tli)
	}
	return p, nil
}

// currentTimeline is the timeline a primary writes.
func currentTimeline(ctx context.Context, c *pgx.Conn) (pg.TimeLineID, error) {
	var name string
	if err := c.QueryRow(ctx, "SELECT pg_walfile_name(pg_current_wal_lsn())").Scan(&name); err != nil {
		return 0, failure.Wrap(failure.Postgres, fmt.Errorf("read the new timeline: %w", err))
	}
	tli, err := strconv.ParseUint(name[:8], 16, 32)
	if err != nil {
		return 0, fmt.Errorf("read the new timeline from %q: %w", name, err)
	}
	return pg.TimeLineID(tli), nil
}

// readHistory parses walDir's history file of tli.
func readHistory(walDir string, tli pg.TimeLineID) ([]pg.HistoryEntry, error) {
	f, err := os.Open(filepath.Join(walDir, pg.HistoryFileName(tli)))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return pg.ParseHistory(f)
}

// timelineStart is where tli began according to its history file in
// walDir (0 when it cannot be read: the record then says less, never
// something wrong).
func timelineStart(walDir string, tli pg.TimeLineID) pg.LSN {
	h, err := readHistory(walDir, tli)
	if err != nil || len(h) == 0 {
		return pg.InvalidLSN
	}
	return h[len(h)-1].SwitchLSN
}

// latestHistoryTLI is the highest timeline with a history file in walDir
// (0 when none can be read): the timeline a standby with
// recovery_target_timeline 'latest' follows once it received that file.
func latestHistoryTLI(walDir string) pg.TimeLineID {
	ents, err := os.ReadDir(walDir)
	if err != nil {
		return 0
	}
	var tli pg.TimeLineID
	for _, e := range ents {
		f, err := pg.ParseWALFileName(e.Name(), pg.WALSegmentSize{}) // a history name has no segment number
		if err == nil && f.Kind == pg.KindHistory {
			tli = max(tli, f.TLI)
		}
	}
	return tli
}
