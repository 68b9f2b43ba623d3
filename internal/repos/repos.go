// Package repos opens the repositories a configuration names, the one way
// every command and the agent do it: each URL's store (storage/open, with
// the retry and concurrency policies), the repository in it, with one codec
// shared by all (its encoder pools), checked to be of one cluster; and
// closes them together.
package repos

import (
	"context"
	"errors"
	"log/slog"

	"github.com/walferry/walferry/internal/codec"
	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/storage"
	"github.com/walferry/walferry/storage/open"
	"github.com/walferry/walferry/storage/retry"
)

// Options say what to open.
type Options struct {
	// URLs are the repositories, in order: a push needs every one, a get
	// reads the first that has the file.
	URLs []string
	// Store tunes every store (concurrency, part size, retry policy).
	Store open.Options
	// Passphrase decrypts encrypted repositories (nil: none configured).
	Passphrase []byte
	// Compression of new objects ("": each repository's default).
	Compression string
	// Cluster, when set, is the local cluster every repository must
	// belong to; when nil, every repository must belong to the first's.
	Cluster *repo.Cluster
}

// ErrNoRepository: no repository is configured.
var ErrNoRepository = failure.New(failure.Usage,
	"no repository configured: pass --repo URL or set WALFERRY_REPO (e.g. file:///var/lib/walferry or s3://bucket/prefix)")

// Set is the opened repositories.
type Set struct {
	Repos  []*repo.Repo
	stores []storage.Store
}

// Open opens every repository of o. On failure nothing stays open.
func Open(ctx context.Context, o Options) (*Set, error) {
	if len(o.URLs) == 0 {
		return nil, ErrNoRepository
	}
	s := &Set{}
	shared := codec.New()
	for _, url := range o.URLs {
		if err := s.add(ctx, url, o, shared); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// OpenAvailable opens the repositories of o that can be reached, for a
// reader that needs only one of them to hold what it reads (archive-get):
// a repository whose store is unreachable or failing (failure.Transient)
// is left out, logged, and its error returned in skipped, so that one
// cloud's outage does not stop recovery from another's copy. Any other
// failure (credentials, no bucket, another cluster) is a configuration to
// fix and fails as in Open; so does every repository being unreachable.
func OpenAvailable(ctx context.Context, o Options, log *slog.Logger) (s *Set, skipped []error, err error) {
	if len(o.URLs) == 0 {
		return nil, nil, ErrNoRepository
	}
	s = &Set{}
	shared := codec.New()
	for _, url := range o.URLs {
		err := s.add(ctx, url, o, shared)
		switch {
		case err == nil:
		case failure.Of(err) == failure.Transient && ctx.Err() == nil:
			skipped = append(skipped, err)
			if len(o.URLs) > 1 && log != nil {
				log.Warn("repository unreachable, reading from the others", "repo", url, "err", err)
			}
		default:
			s.Close()
			return nil, nil, err
		}
	}
	if len(s.Repos) == 0 {
		return nil, nil, errors.Join(skipped...)
	}
	return s, skipped, nil
}

// add opens the repository at url into s, checked to belong to o.Cluster,
// or when that is nil to the cluster of the first repository in s.
func (s *Set) add(ctx context.Context, url string, o Options, shared *codec.Codec) error {
	st, err := OpenStore(ctx, url, o.Store)
	if err != nil {
		return err
	}
	r, err := repo.Open(ctx, st, repo.OpenOptions{Passphrase: o.Passphrase, Compression: o.Compression, Codec: shared})
	if err == nil {
		cl := o.Cluster
		if cl == nil && len(s.Repos) > 0 {
			first := ClusterOf(s.Repos[0])
			cl = &first
		}
		if cl != nil {
			err = r.Metadata().Matches(*cl, st.String())
		}
	}
	if err != nil {
		st.Close()
		return err
	}
	s.stores = append(s.stores, st)
	s.Repos = append(s.Repos, r)
	return nil
}

// OpenPatiently is Open for a long-running process (a receiver, the
// agent): a store that cannot be reached at start (an outage, a restarting
// MinIO, a network not up yet) is retried under p, as an outage while
// running would be, so a supervisor's restart does not turn a short outage
// into a crash loop. Anything else (wrong credentials, no bucket, another
// cluster) fails at once.
func OpenPatiently(ctx context.Context, o Options, p retry.Policy, log *slog.Logger) (*Set, error) {
	var s *Set
	err := retry.Do(ctx, p, "open the repositories", log, func(int) error {
		var err error
		s, err = Open(ctx, o)
		return err
	})
	return s, err
}

// Close closes every store.
func (s *Set) Close() error {
	var errs []error
	for _, st := range s.stores {
		errs = append(errs, st.Close())
	}
	s.stores = nil
	return errors.Join(errs...)
}

// ClusterOf is the cluster identity a repository records.
func ClusterOf(r *repo.Repo) repo.Cluster {
	m := r.Metadata()
	return repo.Cluster{SystemID: m.SystemID, PGMajor: m.PGMajor, WALSegmentSize: m.WALSegmentSize,
		Source: "repository " + r.String()}
}

// OpenStore opens the store at url (a malformed URL is a usage mistake,
// classified where it is parsed).
func OpenStore(ctx context.Context, url string, o open.Options) (storage.Store, error) {
	return open.Store(ctx, url, o)
}

// WithStore opens the store at url, runs fn on it, and closes it: for the
// commands that work on a store rather than an opened repository (repo
// init, check, info).
func WithStore[T any](ctx context.Context, url string, o open.Options, fn func(storage.Store) (T, error)) (T, error) {
	st, err := OpenStore(ctx, url, o)
	if err != nil {
		var zero T
		return zero, err
	}
	defer st.Close()
	return fn(st)
}

// OpenFirst opens the first of o's repositories that can be opened, for a
// command that reads one (a restore; the others stay in its
// restore_command). Each one skipped is logged; when none opens, the first
// one's error is returned.
func OpenFirst(ctx context.Context, o Options, log *slog.Logger) (*Set, error) {
	if len(o.URLs) == 0 {
		return nil, ErrNoRepository
	}
	var firstErr error
	for _, url := range o.URLs {
		one := o
		one.URLs = []string{url}
		s, err := Open(ctx, one)
		if err == nil {
			return s, nil
		}
		if firstErr == nil {
			firstErr = err
		}
		if len(o.URLs) > 1 && log != nil {
			log.Warn("repository unusable, trying the next", "repo", url, "err", err)
		}
	}
	return nil, firstErr
}
