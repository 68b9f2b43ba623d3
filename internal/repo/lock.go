package repo

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/storage"
)

// ErrLocked: another live process holds the lease.
var ErrLocked = failure.New(failure.Locked, "repository is locked by another process")

// LeaseOptions tune Acquire.
type LeaseOptions struct {
	// Purpose says what the holder does ("backup-push 20261122T101500F"),
	// for the message another process prints when it finds the lease.
	Purpose string
	// Renew is how often the holder rewrites the lease; StaleAfter is how
	// old a lease must be before another process may take it over (its
	// holder was killed). Zero means 30 s and 5 min: wide enough for clock
	// skew between hosts, short enough that a killed CronJob does not
	// block the next one for long.
	Renew, StaleAfter time.Duration
}

// leaseRecord is what the lease object holds.
type leaseRecord struct {
	Token    string    `json:"token"`
	Purpose  string    `json:"purpose"`
	Host     string    `json:"host"`
	PID      int       `json:"pid"`
	Acquired time.Time `json:"acquired"`
	Renewed  time.Time `json:"renewed"`
}

// Lease is a held lock. Its context is cancelled when the lease is lost
// (another process took it over after it could not be renewed), so the
// holder's work stops instead of running unprotected.
type Lease struct {
	r      *Repo
	key    string
	rec    leaseRecord
	cancel context.CancelCauseFunc
	ctx    context.Context
	stop   chan struct{}
	done   chan struct{}
	once   sync.Once
}

// Context is cancelled when the lease is lost or released.
func (l *Lease) Context() context.Context { return l.ctx }

// Acquire takes the lease name (see LockKey). A lease older than
// StaleAfter is taken over: its holder died without releasing it. The
// takeover is not atomic (delete, then conditional create), so two
// processes finding the same stale lease in the same instant can both
// proceed; the lease guards against the usual overlap (a CronJob run
// while the previous one still works), not against a deliberate race.
func (r *Repo) Acquire(ctx context.Context, name string, o LeaseOptions) (*Lease, error) {
	if o.Renew <= 0 {
		o.Renew = 30 * time.Second
	}
	if o.StaleAfter <= 0 {
		o.StaleAfter = 5 * time.Minute
	}
	host, _ := os.Hostname()
	var tok [12]byte
	if _, err := rand.Read(tok[:]); err != nil {
		return nil, err
	}
	now := time.Now().UTC()
	l := &Lease{r: r, key: LockKey(name), rec: leaseRecord{
		Token: hex.EncodeToString(tok[:]), Purpose: o.Purpose, Host: host, PID: os.Getpid(),
		Acquired: now, Renewed: now,
	}}
	for attempt := 0; ; attempt++ {
		err := l.write(ctx, true)
		if err == nil {
			break
		}
		if !errors.Is(err, storage.ErrExist) || attempt > 0 {
			return nil, fmt.Errorf("take the lease %s: %w", l.key, err)
		}
		held, rerr := r.readLease(ctx, l.key)
		if errors.Is(rerr, storage.ErrNotExist) {
			continue // released meanwhile
		}
		if rerr != nil {
			return nil, fmt.Errorf("read the lease %s: %w", l.key, rerr)
		}
		if age := time.Since(held.Renewed); age < o.StaleAfter && !deadHere(held) {
			return nil, fmt.Errorf("%w: %s (pid %d on %s, since %s, renewed %s ago); wait for it to finish, or delete %s in %s if that process is gone",
				ErrLocked, held.Purpose, held.PID, held.Host, held.Acquired.Format(time.RFC3339), age.Round(time.Second), l.key, r)
		}
		if err := r.store.Delete(ctx, l.key); err != nil {
			return nil, fmt.Errorf("remove the stale lease %s: %w", l.key, err)
		}
	}
	l.ctx, l.cancel = context.WithCancelCause(context.WithoutCancel(ctx))
	l.stop, l.done = make(chan struct{}), make(chan struct{})
	go l.renew(o.Renew, o.StaleAfter)
	return l, nil
}

func (l *Lease) write(ctx context.Context, create bool) error {
	b, err := json.Marshal(l.rec)
	if err != nil {
		return err
	}
	if create {
		_, err = l.r.PutIfAbsent(ctx, l.key, bytes.NewReader(b))
	} else {
		_, err = l.r.Put(ctx, l.key, bytes.NewReader(b))
	}
	return err
}

func (l *Lease) renew(every, staleAfter time.Duration) {
	defer close(l.done)
	t := time.NewTicker(every)
	defer t.Stop()
	lastOK := time.Now()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(l.ctx, every)
		held, err := l.r.readLease(ctx, l.key)
		if err == nil && held.Token != l.rec.Token {
			cancel()
			l.cancel(fmt.Errorf("%w: the lease %s was taken over by %s (pid %d on %s)", ErrLocked, l.key, held.Purpose, held.PID, held.Host))
			return
		}
		l.rec.Renewed = time.Now().UTC()
		if err == nil || errors.Is(err, storage.ErrNotExist) {
			err = l.write(ctx, false)
		}
		cancel()
		if err == nil {
			lastOK = time.Now()
			continue
		}
		if time.Since(lastOK) > staleAfter/2 {
			l.cancel(fmt.Errorf("%w: could not renew the lease %s for %s: %v", ErrLocked, l.key, time.Since(lastOK).Round(time.Second), err))
			return
		}
	}
}

// Release gives the lease up. It is safe to call more than once.
func (l *Lease) Release(ctx context.Context) error {
	var err error
	l.once.Do(func() {
		close(l.stop)
		<-l.done
		held, rerr := l.r.readLease(ctx, l.key)
		if rerr == nil && held.Token == l.rec.Token {
			err = l.r.store.Delete(ctx, l.key)
		}
		l.cancel(errors.New("lease released"))
	})
	return err
}

func (r *Repo) readLease(ctx context.Context, key string) (leaseRecord, error) {
	var rec leaseRecord
	obj, err := r.Get(ctx, key)
	if err != nil {
		return rec, err
	}
	defer obj.Close()
	b, err := io.ReadAll(obj)
	if err != nil {
		return rec, err
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, fmt.Errorf("lease %s: %w", key, err)
	}
	return rec, nil
}

// deadHere reports whether the lease's holder ran on this host and its
// process is gone: then the lease is stale at once (a killed backup run
// again on the same machine need not wait for StaleAfter).
func deadHere(rec leaseRecord) bool {
	host, err := os.Hostname()
	if err != nil || host != rec.Host || rec.PID <= 0 || rec.PID == os.Getpid() {
		return false
	}
	err = syscall.Kill(rec.PID, 0)
	return errors.Is(err, syscall.ESRCH)
}
