package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/walferry/walferry/storage"
)

// CheckResult reports what Check verified.
type CheckResult struct {
	Repository string   `json:"repository"`
	Metadata   Metadata `json:"metadata"`
	Readable   bool     `json:"readable"`
	Writable   bool     `json:"writable"`
	Deletable  bool     `json:"deletable"`
	ClusterOK  bool     `json:"cluster_ok"`
	// StaleTemporary counts the temporary objects writers killed
	// mid-write left (unmodified for StaleTempAge); the next backup-push
	// or backup-delete removes them.
	StaleTemporary TempSweep `json:"stale_temporary_objects"`
}

// Check verifies that store is reachable, holds a repository, accepts a
// write, a read-back and a delete, and belongs to cl. The first failure is
// returned with what was verified up to it.
func Check(ctx context.Context, store storage.Store, cl Cluster, o OpenOptions) (CheckResult, error) {
	res := CheckResult{Repository: store.String()}
	r, err := Open(ctx, store, o)
	if err != nil {
		return res, err
	}
	res.Metadata, res.Readable = r.Metadata(), true
	if err := r.Metadata().Matches(cl, store.String()); err != nil {
		return res, err
	}
	res.ClusterOK = true

	suffix, err := randomSuffix()
	if err != nil {
		return res, err
	}
	key := probePrefix + suffix
	payload := []byte("walferry repo check " + suffix)
	if _, err := r.Put(ctx, key, bytes.NewReader(payload)); err != nil {
		return res, fmt.Errorf("write test object: %w", err)
	}
	obj, err := r.Get(ctx, key)
	if err != nil {
		return res, fmt.Errorf("read back test object %s: %w", key, err)
	}
	got, err := io.ReadAll(io.LimitReader(obj, int64(len(payload))+1))
	obj.Close()
	if err != nil {
		return res, fmt.Errorf("read back test object %s: %w", key, err)
	}
	if !bytes.Equal(got, payload) {
		return res, fmt.Errorf("read back test object %s in %s: content differs from what was written", key, store)
	}
	res.Writable = true
	if err := store.Delete(ctx, key); err != nil {
		return res, fmt.Errorf("delete test object %s: %w", key, err)
	}
	if _, err := store.Stat(ctx, key); !errors.Is(err, storage.ErrNotExist) {
		return res, fmt.Errorf("test object %s still present after delete (%v)", key, err)
	}
	res.Deletable = true
	if res.StaleTemporary, err = r.SweepTemps(ctx, time.Now().Add(-StaleTempAge), true); err != nil {
		return res, err
	}
	return res, nil
}
