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
}

// InitResult reports what Init did.
type InitResult struct {
	Metadata Metadata
	// Created is false when the repository already existed for the same
	// cluster (repo init is idempotent).
	Created bool
}

// Init creates the repository metadata in store. Running it again for the
// same cluster succeeds and changes nothing; for another cluster it fails
// with ErrWrongCluster. The metadata is created with a conditional write
// so two concurrent inits cannot both win.
func Init(ctx context.Context, store storage.Store, o InitOptions) (InitResult, error) {
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
			return Init(ctx, store, o)
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
