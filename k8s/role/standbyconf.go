package role

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/pgconf"
	"github.com/walferry/walferry/restore"
)

// Standby says how a server follows the new primary once it is a standby.
type Standby struct {
	// SourceConn is the new primary's libpq connection string, written
	// as primary_conninfo ("" : the standby replays the repository only).
	// A password is refused: use a passfile.
	SourceConn string
	// ApplicationName is the standby's name on the primary ("" : walferry).
	ApplicationName string
	// Slot is primary_slot_name ("" : none, and a slot name a copied
	// walferry.conf holds, which names a slot on another server, goes).
	Slot string
	// RestoreCommand is how the standby reads the repository.
	RestoreCommand restore.RestoreCommand
}

// standbyKeys are the settings writeStandby replaces wherever they are.
var standbyKeys = []string{"recovery_target", "recovery_target_lsn", "recovery_target_time", "recovery_target_xid",
	"recovery_target_name", "recovery_target_action", "recovery_target_inclusive", "primary_conninfo", "primary_slot_name"}

// writeStandby turns the stopped server in s into a standby: standby.signal,
// and walferry.conf with restore_command, recovery_target_timeline 'latest'
// (follow the new primary's history file onto its timeline) and
// primary_conninfo. Settings of walferry.conf a standby does not use stay.
func writeStandby(s Server, st Standby, origin string) error {
	rc, err := withExecutable(st.RestoreCommand)
	if err != nil {
		return err
	}
	st.RestoreCommand = rc
	files := pgconf.Files{DataDir: s.DataDir, ConfigFile: s.ConfigFile, Origin: origin}
	settings := []pgconf.Setting{
		{Key: "restore_command", Value: st.RestoreCommand.Line()},
		{Key: "recovery_target_timeline", Value: "latest"},
	}
	if st.SourceConn != "" {
		app := st.ApplicationName
		if app == "" {
			app = pg.DefaultApplicationName
		}
		ci, err := pg.StandbyConnInfo(st.SourceConn, app)
		if err != nil {
			return err
		}
		settings = append(settings, pgconf.Setting{Key: "primary_conninfo", Value: ci})
	}
	if st.Slot != "" {
		settings = append(settings, pgconf.Setting{Key: "primary_slot_name", Value: st.Slot})
	}
	if _, err := files.EnsureInclude(); err != nil {
		return failure.Wrap(failure.Postgres, err)
	}
	// A recovery target left by a restore would stop the standby.
	if _, err := files.Remove(standbyKeys...); err != nil {
		return failure.Wrap(failure.Postgres, err)
	}
	// postgresql.auto.conf is read last: a primary_conninfo there (pg_basebackup
	// -R writes one; pg_rewind copies the source's) would override ours and
	// make a rejoined server stream from itself.
	if _, err := files.ResetAuto(standbyKeys...); err != nil {
		return failure.Wrap(failure.Postgres, err)
	}
	if _, err := files.Set(settings...); err != nil {
		return failure.Wrap(failure.Postgres, err)
	}
	_ = os.Remove(filepath.Join(s.DataDir, "recovery.signal"))
	if err := touchOwned(filepath.Join(s.DataDir, "standby.signal"), s.DataDir); err != nil {
		return failure.Wrap(failure.Postgres, fmt.Errorf("write standby.signal: %w", err))
	}
	return nil
}

// setRestoreCommand writes only restore_command: pg_rewind
// --restore-target-wal runs the target's.
func setRestoreCommand(s Server, rc restore.RestoreCommand, origin string) error {
	rc, err := withExecutable(rc)
	if err != nil {
		return err
	}
	files := pgconf.Files{DataDir: s.DataDir, ConfigFile: s.ConfigFile, Origin: origin}
	if _, err := files.EnsureInclude(); err != nil {
		return failure.Wrap(failure.Postgres, err)
	}
	if _, err := files.Set(pgconf.Setting{Key: "restore_command", Value: rc.Line()}); err != nil {
		return failure.Wrap(failure.Postgres, err)
	}
	return nil
}

// withExecutable names the running walferry in rc when it names none.
func withExecutable(rc restore.RestoreCommand) (restore.RestoreCommand, error) {
	if rc.Executable != "" {
		return rc, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return rc, fmt.Errorf("find walferry's own path for restore_command: %w", err)
	}
	rc.Executable = exe
	return rc, nil
}
