// Package fs stores objects as files under a root directory, on a local disk
// or a network mount (NFS, CIFS/SMB).
//
// A key maps to the file of the same relative path under the root. Writes go
// to a temporary file in the destination directory (named ".tmp-*", never
// listed and never a valid key), which is fsynced, then renamed (Put, Copy) or
// hard-linked (PutIfAbsent) to its final name, and the directory is fsynced:
// a reader sees the old object or the new one, never a part. Deleting a key
// removes the directories it leaves empty, up to the root.
//
// Because keys are paths, a key cannot be both an object and a "directory"
// of other keys ("a" and "a/b"); such a Put fails. Symbolic links to files are
// read like files; symbolic links to directories are not followed by List.
package fs

import (
	"context"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/walferry/walferry/internal/atomicfile"
	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/storage"
)

const (
	// tmpPrefix starts the name of every temporary file. List skips such
	// names and keys may not use them.
	tmpPrefix = atomicfile.TempPrefix
	dirMode   = 0o750
	fileMode  = 0o640
	copyBuf   = 256 << 10
)

// Config configures a filesystem store.
type Config struct {
	// Root is the directory holding the objects. It must exist: walferry
	// never creates the root, so an unmounted volume is not silently
	// replaced by an empty local directory.
	Root string
}

// Client is a storage.Store on a directory tree. It is safe for concurrent
// use, including by several processes sharing the root.
type Client struct {
	root string
	// noLink makes PutIfAbsent use its fallback (rename without replace),
	// as on filesystems without hard links. Tests set it.
	noLink bool
}

var (
	_ storage.Store              = (*Client)(nil)
	_ storage.ConditionalCreator = (*Client)(nil)
	_ storage.Copier             = (*Client)(nil)
	_ storage.TempSweeper        = (*Client)(nil)
)

// New returns a store rooted at cfg.Root. A root that does not exist is an
// error matching storage.ErrNoBucket; one that cannot be reached for lack of
// rights matches storage.ErrPermission.
func New(cfg Config) (*Client, error) {
	if cfg.Root == "" {
		return nil, errors.New("fs: Config.Root is empty: set the repository directory (file:///path)")
	}
	root, err := filepath.Abs(cfg.Root)
	if err != nil {
		return nil, fmt.Errorf("fs: root %s: %w", cfg.Root, err)
	}
	fi, err := os.Stat(root)
	switch {
	case errors.Is(err, iofs.ErrNotExist):
		return nil, &missingRootError{root: root}
	case errors.Is(err, iofs.ErrPermission):
		return nil, fmt.Errorf("fs: root directory %s: %w (grant this user search rights on it and its parents)", root, err)
	case err != nil:
		return nil, fmt.Errorf("fs: root directory %s: %w", root, err)
	case !fi.IsDir():
		return nil, fmt.Errorf("fs: root %s is not a directory: point the repository at a directory", root)
	}
	return &Client{root: root}, nil
}

// missingRootError is a repository directory that is not there. It matches
// storage.ErrNoBucket but says more than "does not exist": the usual cause
// on a server is a volume (NFS) that is not mounted, and creating the
// directory by hand would start a second, empty repository beside the real
// one, splitting the archive in two without a word.
type missingRootError struct{ root string }

func (e *missingRootError) Error() string {
	return fmt.Sprintf("fs: the repository directory %s is missing: if it lives on a mounted volume (NFS, CIFS), check that the volume is mounted "+
		"(do not create an empty directory in its place: that starts a second, empty repository); if the path is wrong, correct it; "+
		"only to create a new repository there, run walferry repo init", e.root)
}

func (e *missingRootError) Is(target error) bool { return target == storage.ErrNoBucket }

// FailureKind classifies it as storage.ErrNoBucket is (failure.Classified).
func (e *missingRootError) FailureKind() failure.Kind { return failure.NoBucket }

// String returns the store's URL, "file:///path".
func (c *Client) String() string { return "file://" + filepath.ToSlash(c.root) }

// Close does nothing: the store holds no resources.
func (c *Client) Close() error { return nil }

// Put stores r under key through a temporary file, replacing any object
// there. On an error or a cancelled ctx the temporary file is removed and a
// previous object is left untouched. Cancellation is noticed between reads
// of r: a Read blocked in r is not interrupted.
func (c *Client) Put(ctx context.Context, key string, r io.Reader) error {
	return c.write(ctx, "put", key, r, false)
}

// PutIfAbsent stores r under key only if no object is there, matching
// storage.ErrExist otherwise. The fully written, fsynced temporary file is
// hard-linked to key, which fails atomically if key exists, even among
// several processes or hosts sharing an NFS export. On filesystems without
// hard links (some CIFS mounts) it falls back to renameat2(RENAME_NOREPLACE)
// where the kernel offers it.
func (c *Client) PutIfAbsent(ctx context.Context, key string, r io.Reader) error {
	return c.write(ctx, "put-if-absent", key, r, true)
}

// Copy copies the object at srcKey to dstKey through a temporary file,
// replacing any object at dstKey. A missing srcKey matches storage.ErrNotExist.
func (c *Client) Copy(ctx context.Context, srcKey, dstKey string) error {
	for _, key := range []string{srcKey, dstKey} {
		if err := checkKey(key); err != nil {
			return fmt.Errorf("fs: copy %q: %w", key, err)
		}
	}
	f, err := c.openFile(ctx, "copy", srcKey)
	if err != nil {
		return err
	}
	defer f.Close()
	return c.write(ctx, "copy", dstKey, f, false)
}

func (c *Client) write(ctx context.Context, op, key string, r io.Reader, exclusive bool) (err error) {
	if err := checkKey(key); err != nil {
		return fmt.Errorf("fs: %s %q: %w", op, key, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("fs: %s %s: %w", op, key, err)
	}
	dst := c.path(key)
	if exclusive {
		// Fail fast before moving any byte; the link below decides races.
		if fi, err := os.Stat(dst); err == nil && fi.Mode().IsRegular() {
			return fmt.Errorf("fs: %s %s: %w", op, key, storage.ErrExist)
		}
	}
	dir := filepath.Dir(dst)
	tmp, err := c.createTemp(dir)
	if errors.Is(err, syscall.ENOTDIR) {
		return fmt.Errorf("fs: %s %s: a parent of the key is an object, not a directory: %w", op, key, err)
	}
	if err != nil {
		return c.fail(op, key, err)
	}
	tmpName := tmp.Name()
	committed := false
	defer func() {
		if !committed {
			tmp.Close()
			os.Remove(tmpName)
		}
	}()

	if err := copyCtx(ctx, tmp, r); err != nil {
		return c.fail(op, key, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("fs: %s %s: %w", op, key, err)
	}
	// From here atomicfile owns the temporary file, removing it on failure.
	committed = true
	place := atomicfile.Rename
	if exclusive {
		place = c.linkNoReplace
	}
	if err := atomicfile.CommitWith(tmp, tmpName, dst, atomicfile.Durable, place); err != nil {
		switch fi, serr := os.Lstat(dst); {
		case exclusive && errors.Is(err, iofs.ErrExist):
			return fmt.Errorf("fs: %s %s: %w", op, key, storage.ErrExist)
		case !exclusive && serr == nil && fi.IsDir():
			return fmt.Errorf("fs: %s %s: the key is a directory holding other keys: %w", op, key, err)
		}
		return c.fail(op, key, err)
	}
	return nil
}

// copyCtx copies r to w, checking ctx between reads.
func copyCtx(ctx context.Context, w io.Writer, r io.Reader) error {
	buf := make([]byte, copyBuf)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, rerr := r.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
		}
		switch {
		case rerr == io.EOF:
			return nil
		case rerr != nil:
			return fmt.Errorf("read: %w", rerr)
		}
	}
}

// createTemp creates an empty temporary file in dir, creating dir (but never
// the root) if needed. A concurrent Delete may prune a directory just
// created, hence the loop.
func (c *Client) createTemp(dir string) (*os.File, error) {
	for attempt := 0; ; attempt++ {
		name := filepath.Join(dir, fmt.Sprintf("%s%016x", tmpPrefix, rand.Uint64()))
		f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, fileMode)
		switch {
		case err == nil:
			return f, nil
		case attempt >= 10:
			return nil, err
		case errors.Is(err, iofs.ErrExist):
			continue
		case errors.Is(err, iofs.ErrNotExist):
			// A concurrent Delete may prune what mkdirAll is building:
			// ENOENT from it means try again (a missing root does not
			// match ErrNotExist).
			if err := c.mkdirAll(dir); err != nil && !errors.Is(err, iofs.ErrNotExist) {
				return nil, err
			}
		default:
			return nil, err
		}
	}
}

// mkdirAll creates dir and its missing parents below the root, fsyncing the
// parent of each directory it creates. It never creates the root.
func (c *Client) mkdirAll(dir string) error {
	rel, err := filepath.Rel(c.root, dir)
	if err != nil || !filepath.IsLocal(rel) {
		return fmt.Errorf("directory %s is outside the root", dir)
	}
	if c.rootMissing() {
		return c.errNoRoot()
	}
	cur := c.root
	for _, elem := range strings.Split(rel, string(filepath.Separator)) {
		parent := cur
		cur = filepath.Join(cur, elem)
		err := os.Mkdir(cur, dirMode)
		switch {
		case err == nil:
			if err := atomicfile.SyncDir(parent); err != nil {
				return err
			}
		case errors.Is(err, iofs.ErrExist):
		default:
			return err
		}
	}
	return nil
}

// Get opens the object for reading. A missing key, or a key naming a
// directory, matches storage.ErrNotExist. Reads fail once ctx is done.
func (c *Client) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	return c.open(ctx, "get", key, 0, -1)
}

// GetRange opens length bytes of the object from offset (to the end when
// length is negative). A range past the end reads what there is.
func (c *Client) GetRange(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	if rc, answered, err := storage.TrivialRange(ctx, c, key, offset, length); answered {
		return rc, err
	}
	return c.open(ctx, "get", key, offset, length)
}

func (c *Client) open(ctx context.Context, op, key string, offset, length int64) (io.ReadCloser, error) {
	if err := checkKey(key); err != nil {
		return nil, fmt.Errorf("fs: %s %q: %w", op, key, err)
	}
	f, err := c.openFile(ctx, op, key)
	if err != nil {
		return nil, err
	}
	if offset > 0 {
		if _, err := f.Seek(offset, io.SeekStart); err != nil {
			f.Close()
			return nil, c.fail(op, key, err)
		}
	}
	rd := &reader{ctx: ctx, f: f, r: f}
	if length >= 0 {
		rd.r = io.LimitReader(f, length)
	}
	return rd, nil
}

// openFile opens the regular file behind key.
func (c *Client) openFile(ctx context.Context, op, key string) (*os.File, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("fs: %s %s: %w", op, key, err)
	}
	f, err := os.Open(c.path(key))
	if err != nil {
		return nil, c.fail(op, key, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, c.fail(op, key, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("fs: %s %s: %w (not a regular file)", op, key, storage.ErrNotExist)
	}
	return f, nil
}

// reader streams a file, failing once its context is done.
type reader struct {
	ctx context.Context // the Get's: reads belong to the operation
	f   *os.File
	r   io.Reader
}

func (r *reader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

func (r *reader) Close() error { return r.f.Close() }

// Stat returns the object's size and modification time.
func (c *Client) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	if err := checkKey(key); err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("fs: stat %q: %w", key, err)
	}
	if err := ctx.Err(); err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("fs: stat %s: %w", key, err)
	}
	fi, err := os.Stat(c.path(key))
	if err != nil {
		return storage.ObjectInfo{}, c.fail("stat", key, err)
	}
	if !fi.Mode().IsRegular() {
		return storage.ObjectInfo{}, fmt.Errorf("fs: stat %s: %w (not a regular file)", key, storage.ErrNotExist)
	}
	return storage.ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// Delete removes the object and then every directory it leaves empty, up to
// (never including) the root. A missing key, or one naming a directory, is
// not an error.
func (c *Client) Delete(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return fmt.Errorf("fs: delete %q: %w", key, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("fs: delete %s: %w", key, err)
	}
	p := c.path(key)
	fi, err := os.Lstat(p)
	switch {
	case isNotExist(err):
		if c.rootMissing() {
			return fmt.Errorf("fs: delete %s: %w", key, c.errNoRoot())
		}
		return nil
	case err != nil:
		return c.fail("delete", key, err)
	case fi.IsDir():
		return nil
	}
	if err := os.Remove(p); err != nil && !isNotExist(err) {
		return c.fail("delete", key, err)
	}
	dir := filepath.Dir(p)
	if err := atomicfile.SyncDir(dir); err != nil && !isNotExist(err) {
		return c.fail("delete", key, err)
	}
	c.prune(dir)
	return nil
}

// prune removes dir and its parents while they are empty, stopping below
// the root. A directory that a concurrent Put is filling is not empty, and
// a Put whose directory vanishes before it creates its temporary file
// creates the directory again.
func (c *Client) prune(dir string) {
	for dir != c.root && strings.HasPrefix(dir, c.root+string(filepath.Separator)) {
		if err := syscall.Rmdir(dir); err != nil {
			return
		}
		dir = filepath.Dir(dir)
	}
}

// List calls fn for each object whose key starts with prefix, in lexical
// key order. It reads one directory at a time and visits a directory's
// entries sorted as keys sort: a directory "a" as "a/", after "a-b" and
// "a.b" and before "a0". Temporary files are skipped; objects deleted
// during the walk may or may not be reported.
func (c *Client) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	dirPart, name := path.Split(prefix)
	if err := checkDir(dirPart); err != nil {
		return fmt.Errorf("fs: list %q: %w", prefix, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("fs: list %s: %w", prefix, err)
	}
	return c.walk(ctx, prefix, dirPart, name, fn)
}

type dirEntry struct {
	name    string
	sortKey string
	dir     bool
	info    iofs.FileInfo // for symbolic links, the target's
	entry   iofs.DirEntry
}

// walk lists the directory rel ("" or ending in "/") for names starting
// with filter, recursing into subdirectories.
func (c *Client) walk(ctx context.Context, prefix, rel, filter string, fn func(storage.ObjectInfo) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("fs: list %s: %w", prefix, err)
	}
	dir := filepath.Join(c.root, filepath.FromSlash(rel))
	entries, err := os.ReadDir(dir)
	if err != nil {
		if isNotExist(err) {
			if c.rootMissing() {
				return fmt.Errorf("fs: list %s: %w", prefix, c.errNoRoot())
			}
			return nil // no such "directory", or pruned during the walk
		}
		return c.fail("list", prefix, err)
	}
	ents := make([]dirEntry, 0, len(entries))
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, filter) || strings.HasPrefix(name, tmpPrefix) {
			continue
		}
		de := dirEntry{name: name, sortKey: name, entry: e}
		switch t := e.Type(); {
		case t.IsDir():
			de.dir, de.sortKey = true, name+"/"
		case t&iofs.ModeSymlink != 0:
			fi, err := os.Stat(filepath.Join(dir, name))
			if err != nil || !fi.Mode().IsRegular() {
				continue // dangling, or not followed
			}
			de.info = fi
		case !t.IsRegular():
			continue
		}
		ents = append(ents, de)
	}
	slices.SortFunc(ents, func(a, b dirEntry) int { return strings.Compare(a.sortKey, b.sortKey) })
	for _, de := range ents {
		if de.dir {
			if err := c.walk(ctx, prefix, rel+de.name+"/", "", fn); err != nil {
				return err
			}
			continue
		}
		fi := de.info
		if fi == nil {
			if fi, err = de.entry.Info(); isNotExist(err) {
				continue // deleted during the walk
			} else if err != nil {
				return c.fail("list", prefix, err)
			}
		}
		if err := fn(storage.ObjectInfo{Key: rel + de.name, Size: fi.Size(), ModTime: fi.ModTime()}); err != nil {
			return err
		}
	}
	return nil
}

// linkNoReplace gives the file at tmp the name dst unless dst exists, in
// which case the error matches fs.ErrExist.
func (c *Client) linkNoReplace(tmp, dst string) error {
	if !c.noLink {
		err := os.Link(tmp, dst)
		if err == nil || !linkUnsupported(err) {
			return err
		}
	}
	return renameNoReplace(tmp, dst)
}

func (c *Client) path(key string) string {
	return filepath.Join(c.root, filepath.FromSlash(key))
}

func (c *Client) rootMissing() bool {
	_, err := os.Stat(c.root)
	return isNotExist(err)
}

func (c *Client) errNoRoot() error { return &missingRootError{root: c.root} }

// fail wraps err from operation op on key, mapping it onto the storage
// errors: a missing file (or a file where a directory was expected) matches
// storage.ErrNotExist, unless the root itself is gone (storage.ErrNoBucket);
// EACCES/EPERM already match storage.ErrPermission; transient network
// filesystem errors are marked retryable.
func (c *Client) fail(op, key string, err error) error {
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("fs: %s %s: %w", op, key, err)
	case errors.Is(err, storage.ErrNoBucket):
		return fmt.Errorf("fs: %s %s: %w", op, key, err)
	case isNotExist(err):
		if c.rootMissing() {
			return fmt.Errorf("fs: %s %s: %w", op, key, c.errNoRoot())
		}
		if errors.Is(err, iofs.ErrNotExist) {
			return fmt.Errorf("fs: %s %s: %w", op, key, err)
		}
		return fmt.Errorf("fs: %s %s: %w (%v)", op, key, storage.ErrNotExist, err)
	case isTransient(err):
		return storage.Retryable(fmt.Errorf("fs: %s %s: %w", op, key, err))
	}
	return fmt.Errorf("fs: %s %s: %w", op, key, err)
}

// isNotExist reports a missing file, or a path through a regular file
// (ENOTDIR), which for a key also means "no such object".
func isNotExist(err error) bool {
	return errors.Is(err, iofs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

// checkKey rejects keys that are not clean relative slash-separated paths,
// or that use the temporary-file prefix.
func checkKey(key string) error {
	if key == "" {
		return errors.New("invalid key: empty")
	}
	if strings.HasSuffix(key, "/") {
		return errors.New("invalid key: ends with /")
	}
	return checkDir(key + "/")
}

// checkDir checks a List prefix's directory part: "" or a clean relative
// path ending in "/".
func checkDir(dir string) error {
	if dir == "" {
		return nil
	}
	if strings.HasPrefix(dir, "/") {
		return errors.New("invalid key: absolute path")
	}
	if strings.ContainsRune(dir, 0) {
		return errors.New("invalid key: contains NUL")
	}
	for _, elem := range strings.Split(strings.TrimSuffix(dir, "/"), "/") {
		switch {
		case elem == "":
			return errors.New("invalid key: empty path element")
		case elem == "." || elem == "..":
			return fmt.Errorf("invalid key: %q element", elem)
		case strings.HasPrefix(elem, tmpPrefix):
			return fmt.Errorf("invalid key: element %q uses the reserved prefix %q", elem, tmpPrefix)
		}
	}
	if !filepath.IsLocal(filepath.FromSlash(dir)) {
		return errors.New("invalid key: not a local path on this system")
	}
	return nil
}

// SweepTemps finds the temporary files under prefix that stale says a
// writer killed mid-write (kill -9, a crash) left behind, invisible to
// List. Unless dryRun, each is removed, with the directories it leaves
// empty. It returns what it found, keyed as the file's path under the root.
func (c *Client) SweepTemps(ctx context.Context, prefix string, stale func(storage.ObjectInfo) bool, dryRun bool) ([]storage.ObjectInfo, error) {
	if dirPart, _ := path.Split(prefix); checkDir(dirPart) != nil {
		return nil, fmt.Errorf("fs: sweep %q: %w", prefix, checkDir(dirPart))
	}
	start := filepath.Join(c.root, filepath.FromSlash(prefix))
	if !strings.HasSuffix(prefix, "/") && prefix != "" {
		start = filepath.Dir(start)
	}
	var found []storage.ObjectInfo
	var dirs []string
	err := filepath.WalkDir(start, func(path string, d iofs.DirEntry, err error) error {
		if err != nil {
			if isNotExist(err) {
				return nil
			}
			return err
		}
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		rel, rerr := filepath.Rel(c.root, path)
		if rerr != nil {
			return rerr
		}
		key := filepath.ToSlash(rel)
		if d.IsDir() {
			dirs = append(dirs, path)
			return nil
		}
		if !strings.HasPrefix(d.Name(), tmpPrefix) || !strings.HasPrefix(key, prefix) || !d.Type().IsRegular() {
			return nil
		}
		fi, ierr := d.Info()
		if isNotExist(ierr) {
			return nil
		} else if ierr != nil {
			return ierr
		}
		oi := storage.ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}
		if !stale(oi) {
			return nil
		}
		found = append(found, oi)
		if dryRun {
			return nil
		}
		if err := os.Remove(path); err != nil && !isNotExist(err) {
			return err
		}
		return nil
	})
	if err != nil {
		return found, c.fail("sweep", prefix, err)
	}
	if !dryRun && len(found) > 0 {
		// Deepest first: a directory emptied by the sweep goes, a
		// non-empty one stays (Rmdir refuses it).
		for i := len(dirs) - 1; i >= 0; i-- {
			if dirs[i] != c.root {
				syscall.Rmdir(dirs[i])
			}
		}
	}
	return found, nil
}
