package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/walferry/walferry/internal/codec"
	"github.com/walferry/walferry/storage"
)

// InitOptions describe a new repository.
type InitOptions struct {
	Cluster     Cluster
	Compression string // default codec of new objects; validated here
	// Passphrase, when set, makes the repository encrypted.
	Passphrase []byte
	// CreatedBy records the walferry version.
	CreatedBy string
	Now       func() time.Time
	// Primary, when set, is recorded as generation 1 of the lineage record
	// (Reason "init") unless the repository has a generation already:
	// the cluster repo init runs for is the primary every writer is then
	// checked against. Its Instance, Site and Timeline say who and where.
	Primary *Generation
}

// InitResult reports what Init did.
type InitResult struct {
	Metadata Metadata
	// Created is false when the repository already existed for the same
	// cluster (repo init is idempotent).
	Created bool
	// Lineage is the newest generation of the lineage record when
	// InitOptions.Primary was set; LineageCreated says Init recorded it.
	Lineage        *Generation
	LineageCreated bool
}

// Init creates the repository metadata in store. Running it again for the
// same cluster succeeds and changes nothing; for another cluster it fails
// with ErrWrongCluster. The metadata is created with a conditional write
// so two concurrent inits cannot both win. With o.Primary, generation 1 of
// the lineage record follows (see recordInit).
func Init(ctx context.Context, store storage.Store, o InitOptions) (InitResult, error) {
	res, err := initMetadata(ctx, store, o)
	if err != nil || o.Primary == nil {
		return res, err
	}
	return recordInit(ctx, store, o, res)
}

// recordInit records o.Primary as generation 1 of the lineage record
// when the repository has no generation, also when it was initialized
// before lineage records existed; a repository that has one keeps it
// (running repo init again changes nothing).
func recordInit(ctx context.Context, store storage.Store, o InitOptions, res InitResult) (InitResult, error) {
	r, err := Open(ctx, store, OpenOptions{Passphrase: o.Passphrase})
	if err != nil {
		return res, err
	}
	g, ok, err := r.Lineage(ctx)
	if err != nil {
		return res, err
	}
	if !ok {
		want := *o.Primary
		want.Reason, want.SystemID, want.TimelineStart, want.FencedAt, want.Switchover = "init", res.Metadata.SystemID, 0, 0, nil
		if o.Now != nil {
			want.Time = o.Now().UTC()
		}
		g, err = r.NextGeneration(ctx, 0, want)
		switch {
		case errors.Is(err, ErrLineageRace):
			// Another init (or a sidecar) recorded it first: that one stands.
			if g, ok, err = r.Lineage(ctx); err == nil && !ok {
				err = fmt.Errorf("the lineage record of %s has no generation after a lost race to record one; run repo init again", r)
			}
		case err == nil:
			res.LineageCreated = true
		}
		if err != nil {
			return res, err
		}
	}
	res.Lineage = &g
	return res, nil
}

// initMetadata creates the repository metadata unless it exists for the
// same cluster.
func initMetadata(ctx context.Context, store storage.Store, o InitOptions) (InitResult, error) {
	c := codec.New()
	if _, _, err := codec.ParseCompression(o.Compression); err != nil {
		return InitResult{}, fmt.Errorf("compression %q: %w", o.Compression, err)
	}
	if existing, err := readMetadata(ctx, c, store); err == nil {
		if err := existing.Matches(o.Cluster, store.String()); err != nil {
			return InitResult{}, err
		}
		return InitResult{Metadata: existing}, nil
	} else if !errors.Is(err, ErrNotInitialized) {
		return InitResult{}, err
	}
	if err := ensureEmpty(ctx, store); err != nil {
		return InitResult{}, err
	}
	now := time.Now
	if o.Now != nil {
		now = o.Now
	}
	m := Metadata{
		FormatVersion:  FormatVersion,
		SystemID:       o.Cluster.SystemID,
		PGMajor:        o.Cluster.PGMajor,
		WALSegmentSize: o.Cluster.WALSegmentSize,
		Compression:    o.Compression,
		CreatedAt:      now().UTC().Truncate(time.Second),
		CreatedBy:      o.CreatedBy,
	}
	if _, err := m.SegmentSize(); err != nil {
		return InitResult{}, fmt.Errorf("cluster from %s: %w", o.Cluster.Source, err)
	}
	if len(o.Passphrase) > 0 {
		salt, err := codec.NewSalt()
		if err != nil {
			return InitResult{}, err
		}
		key, err := codec.DeriveKey(o.Passphrase, salt)
		if err != nil {
			return InitResult{}, err
		}
		m.EncryptionSalt, m.EncryptionKeyID = salt, key.ID()
	}
	body, err := encodeMetadata(c, m)
	if err != nil {
		return InitResult{}, fmt.Errorf("encode repository metadata: %w", err)
	}
	put := store.Put
	if cc, ok := store.(storage.ConditionalCreator); ok {
		put = cc.PutIfAbsent
	}
	if err := put(ctx, MetadataKey, bytes.NewReader(body)); err != nil {
		if errors.Is(err, storage.ErrExist) {
			// Lost a race with another init: accept it if it is ours.
			return initMetadata(ctx, store, o)
		}
		return InitResult{}, fmt.Errorf("write repository metadata to %s: %w", store, err)
	}
	return InitResult{Metadata: m, Created: true}, nil
}

// ensureEmpty refuses to initialize over objects that are not a walferry
// repository (another tool's archive, a wrong prefix).
func ensureEmpty(ctx context.Context, store storage.Store) error {
	const sample = 200 // enough to recognize what is there
	var keys []string
	errStop := errors.New("stop")
	err := store.List(ctx, "", func(oi storage.ObjectInfo) error {
		keys = append(keys, oi.Key)
		if len(keys) == sample {
			return errStop
		}
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		return fmt.Errorf("list %s: %w", store, err)
	}
	if len(keys) == 0 {
		return nil
	}
	found := fmt.Sprintf("%d objects", len(keys))
	switch len(keys) {
	case 1:
		found = "1 object"
	case sample:
		found = fmt.Sprintf("%d objects or more", sample)
	}
	shown := keys[:min(3, len(keys))]
	more := ""
	if len(keys) > len(shown) {
		more = ", ..."
	}
	return fmt.Errorf("%w: %s is not empty: it holds %s (%s%s) but no walferry metadata (%s)%s; "+
		"choose an empty bucket, container, directory or prefix for a new repository, or fix --repo if you meant an existing one",
		ErrNotRepository, store, found, quoteList(shown), more, MetadataKey, recognize(keys))
}

// recognize names what a listing looks like, when it is something known,
// as ": it looks like ...".
func recognize(keys []string) string {
	has := func(pred func(string) bool) bool { return slices.ContainsFunc(keys, pred) }
	switch {
	case has(func(k string) bool { return k == "PG_VERSION" || k == "global/pg_control" }):
		return ": it looks like a PostgreSQL data directory"
	case has(func(k string) bool {
		return strings.HasSuffix(k, "/archive.info") || strings.HasSuffix(k, "/backup.info")
	}):
		return ": it looks like a pgBackRest repository"
	case has(func(k string) bool {
		return strings.HasPrefix(k, "basebackups_005/") || strings.HasPrefix(k, "wal_005/")
	}):
		return ": it looks like a WAL-G or WAL-E archive"
	}
	return ""
}

func quoteList(keys []string) string {
	q := make([]string, len(keys))
	for i, k := range keys {
		q[i] = strconv.Quote(k)
	}
	return strings.Join(q, ", ")
}
