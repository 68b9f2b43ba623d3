package replication

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"strconv"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walferry/walferry/internal/pg"
)

// Slot is a replication slot as READ_REPLICATION_SLOT reports it.
type Slot struct {
	Name string
	// Type is "physical" or "logical"; "" when no slot has the name.
	Type string
	// RestartLSN is the oldest WAL the slot keeps (InvalidLSN when it
	// keeps none yet), on RestartTimeline.
	RestartLSN      pg.LSN
	RestartTimeline pg.TimeLineID
}

// slotName is what PostgreSQL accepts as a slot name
// (ReplicationSlotValidateName).
var slotName = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// ValidSlotName reports an error naming the rule when name is not a
// valid replication slot name.
func ValidSlotName(name string) error {
	if !slotName.MatchString(name) {
		return fmt.Errorf("invalid replication slot name %q: use 1 to 63 lower-case letters, digits and underscores", name)
	}
	return nil
}

// ReadSlot runs READ_REPLICATION_SLOT: the slot's type and restart point,
// or a Slot with an empty Type when none has that name. Of a logical slot
// it returns only the type (PostgreSQL 15 refuses to read more).
func (c *Conn) ReadSlot(ctx context.Context, name string) (Slot, error) {
	if err := ValidSlotName(name); err != nil {
		return Slot{}, fmt.Errorf("replication: %w", err)
	}
	if err := c.require("READ_REPLICATION_SLOT"); err != nil {
		return Slot{}, err
	}
	s := Slot{Name: name}
	row, err := c.queryRow(ctx, "READ_REPLICATION_SLOT "+name, 3)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "0A000" { // feature_not_supported: "cannot use ... with a logical replication slot"
		s.Type = "logical"
		return s, nil
	}
	if err != nil {
		return Slot{}, err
	}
	if row[0] == nil {
		return s, nil
	}
	s.Type = string(row[0])
	if row[1] != nil {
		if s.RestartLSN, err = pg.ParseLSN(string(row[1])); err != nil {
			return Slot{}, fmt.Errorf("replication: READ_REPLICATION_SLOT %s on %s: %w: %w", name, c.desc, ErrProtocol, err)
		}
	}
	if row[2] != nil {
		tli, err := strconv.ParseUint(string(row[2]), 10, 32)
		if err != nil {
			return Slot{}, fmt.Errorf("replication: READ_REPLICATION_SLOT %s on %s: %w: timeline %q", name, c.desc, ErrProtocol, row[2])
		}
		s.RestartTimeline = pg.TimeLineID(tli)
	}
	return s, nil
}

// CreatePhysicalSlot makes sure a physical slot called name exists:
// missing, it is created with CREATE_REPLICATION_SLOT name PHYSICAL
// RESERVE_WAL (so it keeps WAL from the moment it exists), and created is
// true; an existing physical slot, whoever made it, is fine as it is. A
// slot of another type under that name is an error wrapping fs.ErrExist:
// the name is taken.
func (c *Conn) CreatePhysicalSlot(ctx context.Context, name string) (slot Slot, created bool, err error) {
	slot, err = c.ReadSlot(ctx, name)
	if err != nil {
		return Slot{}, false, err
	}
	if slot.Type == "" {
		_, err := c.pc.Exec(ctx, "CREATE_REPLICATION_SLOT "+name+" PHYSICAL RESERVE_WAL").ReadAll()
		var pgErr *pgconn.PgError
		if err != nil && !(errors.As(err, &pgErr) && pgErr.Code == "42710") { // duplicate_object: created meanwhile
			return Slot{}, false, fmt.Errorf("replication: create slot %s on %s: %w", name, c.desc, err)
		}
		created = err == nil
		if slot, err = c.ReadSlot(ctx, name); err != nil {
			return Slot{}, false, err
		}
	}
	if slot.Type == "" {
		return Slot{}, false, fmt.Errorf("replication: slot %s on %s was dropped while it was being created", name, c.desc)
	}
	if slot.Type != "physical" {
		return Slot{}, false, fmt.Errorf("replication: slot %s on %s is a %q slot, not a physical one: %w; choose another slot name",
			name, c.desc, slot.Type, fs.ErrExist)
	}
	return slot, created, nil
}
