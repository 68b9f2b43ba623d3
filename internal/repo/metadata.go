// Package repo knows what lands in a walferry repository: the key layout,
// the metadata object that ties a repository to one PostgreSQL cluster
// lineage, and how objects are framed (compressed, encrypted, checksummed)
// on their way in and out of a storage.Store.
package repo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/walferry/walferry/internal/codec"
	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/storage"
)

// FormatVersion is the repository format this build writes and the newest
// it reads.
const FormatVersion = 1

// maxMetadataSize bounds how much of the metadata object is read: it is a
// few hundred bytes, and a corrupt or foreign object must not be slurped.
const maxMetadataSize = 1 << 20

// Errors of the repository domain. Match with errors.Is.
var (
	// ErrNotInitialized: the location holds no walferry repository.
	ErrNotInitialized = failure.New(failure.NotInitialized, "repository is not initialized")
	// ErrWrongCluster: the repository belongs to another cluster lineage.
	ErrWrongCluster = failure.New(failure.WrongCluster, "repository belongs to another cluster")
	// ErrNotRepository: the location holds objects, but no walferry
	// repository (another tool's archive, a data directory, a wrong prefix).
	ErrNotRepository = failure.New(failure.NotRepository, "not a walferry repository")
	// ErrIncompatible: the repository was written by a newer format.
	ErrIncompatible = failure.New(failure.Incompatible, "repository format is not supported by this walferry")
)

// Metadata describes a repository. It is stored uncompressed and
// unencrypted (but checksummed) so any walferry can read it before it has
// a key.
type Metadata struct {
	FormatVersion  int    `json:"format_version"`
	SystemID       uint64 `json:"system_identifier,string"`
	PGMajor        int    `json:"pg_major"`
	WALSegmentSize int64  `json:"wal_segment_size"`
	// Compression is the default codec of new objects ("lz4", "zstd:3").
	Compression string `json:"compression"`
	// EncryptionKeyID and EncryptionSalt are set when the repository is
	// encrypted: the salt derives the master key from the passphrase, the
	// ID tells a wrong passphrase from a right one.
	EncryptionKeyID string    `json:"encryption_key_id,omitempty"`
	EncryptionSalt  []byte    `json:"encryption_salt,omitempty"`
	CreatedAt       time.Time `json:"created_at"`
	CreatedBy       string    `json:"created_by"`
}

// Encrypted reports whether the repository's objects are encrypted.
func (m Metadata) Encrypted() bool { return m.EncryptionKeyID != "" }

// SegmentSize returns the WAL segment size as the pg package's type.
func (m Metadata) SegmentSize() (pg.WALSegmentSize, error) {
	return pg.NewWALSegmentSize(m.WALSegmentSize)
}

// Cluster identifies the PostgreSQL cluster a command runs for.
type Cluster struct {
	SystemID       uint64
	PGMajor        int
	WALSegmentSize int64
	// Source says where the identity was read, for messages
	// ("data directory /var/lib/postgresql/15/main").
	Source string
}

// ClusterFromControlData builds a Cluster from a data directory's control file.
func ClusterFromControlData(cd *pg.ControlData, dataDir string) (Cluster, error) {
	size, err := cd.SegmentSize()
	if err != nil {
		return Cluster{}, err
	}
	return Cluster{SystemID: cd.SystemIdentifier, PGMajor: cd.Major, WALSegmentSize: size.Bytes(),
		Source: "data directory " + dataDir}, nil
}

// ClusterFromInfo builds a Cluster from a live server's answers.
func ClusterFromInfo(info pg.Info, conn string) Cluster {
	return Cluster{SystemID: info.SystemID, PGMajor: info.Major, WALSegmentSize: info.WALSegSize,
		Source: "server " + conn}
}

// Matches returns nil when the repository belongs to cl, else an error
// wrapping ErrWrongCluster that names both identities and the fix.
func (m Metadata) Matches(cl Cluster, where string) error {
	switch {
	case m.SystemID != cl.SystemID:
		return fmt.Errorf("%w: %s belongs to system identifier %d, but %s has system identifier %d; "+
			"point --repo at this cluster's repository, or run walferry repo init on an empty location",
			ErrWrongCluster, where, m.SystemID, cl.Source, cl.SystemID)
	case m.PGMajor != cl.PGMajor:
		return fmt.Errorf("%w: %s holds PostgreSQL %d, but %s runs PostgreSQL %d; "+
			"after a major upgrade start a new repository with walferry repo init on an empty location",
			ErrWrongCluster, where, m.PGMajor, cl.Source, cl.PGMajor)
	case m.WALSegmentSize != cl.WALSegmentSize:
		return fmt.Errorf("%w: %s uses %d-byte WAL segments, but %s uses %d-byte segments",
			ErrWrongCluster, where, m.WALSegmentSize, cl.Source, cl.WALSegmentSize)
	}
	return nil
}

// encodeMetadata frames the metadata as a checksummed, uncompressed object.
func encodeMetadata(c *codec.Codec, m Metadata) ([]byte, error) {
	body, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	w, err := c.NewWriter(&buf, codec.Options{Compression: codec.None})
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(append(body, '\n')); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// readMetadata reads and verifies the metadata object of store.
func readMetadata(ctx context.Context, c *codec.Codec, store storage.Store) (Metadata, error) {
	rc, err := store.Get(ctx, MetadataKey)
	if errors.Is(err, storage.ErrNotExist) {
		return Metadata{}, fmt.Errorf("%w: %s has no %s object; run walferry repo init --repo %s",
			ErrNotInitialized, store, MetadataKey, store)
	}
	if err != nil {
		return Metadata{}, fmt.Errorf("read repository metadata %s in %s: %w", MetadataKey, store, err)
	}
	defer rc.Close()
	r, err := c.NewReader(io.LimitReader(rc, maxMetadataSize), nil)
	if err != nil {
		return Metadata{}, fmt.Errorf("read repository metadata %s in %s: %w", MetadataKey, store, err)
	}
	defer r.Close()
	body, err := io.ReadAll(r)
	if err != nil {
		return Metadata{}, fmt.Errorf("read repository metadata %s in %s: %w", MetadataKey, store, err)
	}
	var m Metadata
	if err := json.Unmarshal(body, &m); err != nil {
		return Metadata{}, fmt.Errorf("%w: repository metadata %s in %s does not parse: %v", codec.ErrCorrupt, MetadataKey, store, err)
	}
	if m.FormatVersion > FormatVersion || m.FormatVersion < 1 {
		return Metadata{}, fmt.Errorf("%w: %s has format version %d, this walferry reads 1..%d; upgrade walferry",
			ErrIncompatible, store, m.FormatVersion, FormatVersion)
	}
	if _, err := m.SegmentSize(); err != nil {
		return Metadata{}, fmt.Errorf("%w: repository metadata in %s: %v", codec.ErrCorrupt, store, err)
	}
	return m, nil
}
