package repo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"github.com/walferry/walferry/internal/codec"
	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/storage"
)

// Repo is an opened repository: a store whose metadata was read and
// checked, plus the codec settings for its objects.
type Repo struct {
	store storage.Store
	meta  Metadata
	codec *codec.Codec
	key   *codec.Key // nil when the repository is not encrypted
	opts  codec.Options
}

// OpenOptions tune how a repository is opened.
type OpenOptions struct {
	// Passphrase decrypts an encrypted repository (and encrypts new
	// objects). Ignored for unencrypted repositories.
	Passphrase []byte
	// Compression overrides the repository's default for new objects; empty
	// keeps the default.
	Compression string
	// Codec shares encoder pools between repositories; nil makes a new one.
	Codec *codec.Codec
}

// ErrPassphrase: the repository is encrypted and the passphrase is missing or wrong.
var ErrPassphrase = failure.New(failure.Permission, "encryption passphrase problem")

// Open reads the repository's metadata and prepares its codec.
func Open(ctx context.Context, store storage.Store, o OpenOptions) (*Repo, error) {
	c := o.Codec
	if c == nil {
		c = codec.New()
	}
	meta, err := readMetadata(ctx, c, store)
	if err != nil {
		return nil, err
	}
	r := &Repo{store: store, meta: meta, codec: c}
	spec := meta.Compression
	if o.Compression != "" {
		spec = o.Compression
	}
	comp, level, err := codec.ParseCompression(spec)
	if err != nil {
		return nil, fmt.Errorf("compression %q: %w", spec, err)
	}
	r.opts = codec.Options{Compression: comp, Level: level}
	if meta.Encrypted() {
		if len(o.Passphrase) == 0 {
			return nil, fmt.Errorf("%w: %s is encrypted (key id %s); set WALFERRY_ENCRYPTION_PASSPHRASE or --encryption-passphrase-file",
				ErrPassphrase, store, meta.EncryptionKeyID)
		}
		key, err := codec.DeriveKey(o.Passphrase, meta.EncryptionSalt)
		if err != nil {
			return nil, fmt.Errorf("derive encryption key: %w", err)
		}
		if key.ID() != meta.EncryptionKeyID {
			return nil, fmt.Errorf("%w: the passphrase gives key id %s but %s was initialized with key id %s; use the repository's passphrase",
				ErrPassphrase, key.ID(), store, meta.EncryptionKeyID)
		}
		r.key = key
		r.opts.Key = key
	}
	return r, nil
}

// Metadata returns the repository's metadata.
func (r *Repo) Metadata() Metadata { return r.meta }

// Store returns the underlying store.
func (r *Repo) Store() storage.Store { return r.store }

// Compression is the algorithm new objects are written with.
func (r *Repo) Compression() codec.Compression { return r.opts.Compression }

// String names the repository for messages.
func (r *Repo) String() string { return r.store.String() }

// keys resolves the key an object was encrypted with.
func (r *Repo) keys() codec.KeyResolver {
	if r.key == nil {
		return nil
	}
	return r.key
}

// ObjectSum is what Put learned about the raw bytes it stored.
type ObjectSum struct {
	Sum        string // "sha256:..." of the raw bytes
	RawSize    int64
	StoredSize int64
}

// Put encodes everything read from src (compressed, maybe encrypted, with
// a checksum trailer) and stores it under key. The store's Put is atomic,
// so a failure leaves nothing under key. Memory is bounded by the codec's
// and the store's buffers, not by the object's size.
func (r *Repo) Put(ctx context.Context, key string, src io.Reader) (ObjectSum, error) {
	return r.put(ctx, key, src, r.store.Put)
}

// PutIfAbsent is Put that fails with storage.ErrExist when key is taken.
// Stores without conditional create fall back to Stat then Put, which is
// not race-free; every backend walferry ships supports it.
func (r *Repo) PutIfAbsent(ctx context.Context, key string, src io.Reader) (ObjectSum, error) {
	if cc, ok := r.store.(storage.ConditionalCreator); ok {
		return r.put(ctx, key, src, cc.PutIfAbsent)
	}
	if _, err := r.store.Stat(ctx, key); err == nil {
		return ObjectSum{}, fmt.Errorf("%s: %w", key, storage.ErrExist)
	} else if !errors.Is(err, storage.ErrNotExist) {
		return ObjectSum{}, err
	}
	return r.put(ctx, key, src, r.store.Put)
}

// PutOptions select the variant of PutWith.
type PutOptions struct {
	// IfAbsent fails with storage.ErrExist when key is taken (PutIfAbsent).
	IfAbsent bool
	// NoRawSum leaves the content SHA-256 out of the object
	// (codec.Options.NoRawSum): for objects whose content the caller
	// checksums itself (backup data), or whose compressed stream checks
	// it (zstd and gzip WAL files, see codec.Compression.ChecksContent).
	// ObjectSum.Sum is then empty.
	NoRawSum bool
	// Slots, when set, makes the encoder wait for one of them, and hold
	// it while it encodes (see EncodeSlots).
	Slots *EncodeSlots
}

// PutWith is Put or PutIfAbsent with options.
func (r *Repo) PutWith(ctx context.Context, key string, src io.Reader, o PutOptions) (ObjectSum, error) {
	opts := r.opts
	opts.NoRawSum = o.NoRawSum
	if !o.IfAbsent {
		return r.putOpts(ctx, key, src, r.store.Put, opts, o.Slots)
	}
	if cc, ok := r.store.(storage.ConditionalCreator); ok {
		return r.putOpts(ctx, key, src, cc.PutIfAbsent, opts, o.Slots)
	}
	if _, err := r.store.Stat(ctx, key); err == nil {
		return ObjectSum{}, fmt.Errorf("%s: %w", key, storage.ErrExist)
	} else if !errors.Is(err, storage.ErrNotExist) {
		return ObjectSum{}, err
	}
	return r.putOpts(ctx, key, src, r.store.Put, opts, o.Slots)
}

func (r *Repo) put(ctx context.Context, key string, src io.Reader,
	store func(context.Context, string, io.Reader) error) (ObjectSum, error) {
	return r.putOpts(ctx, key, src, store, r.opts, nil)
}

func (r *Repo) putOpts(ctx context.Context, key string, src io.Reader,
	store func(context.Context, string, io.Reader) error, opts codec.Options, slots *EncodeSlots) (ObjectSum, error) {
	// The slot is taken before the store starts (no temp file or upload
	// waits open for it) and given back by the encoder when it is done.
	if err := slots.acquire(ctx); err != nil {
		return ObjectSum{}, fmt.Errorf("store %s in %s: %w", key, r.store, err)
	}
	pr, pw := io.Pipe()
	type encoded struct {
		sum ObjectSum
		err error
	}
	done := make(chan encoded, 1)
	go func() {
		// The encoder writes its header at once, so it must run while the
		// store reads the other end of the pipe.
		var res encoded
		zw, err := r.codec.NewWriter(pw, opts)
		if err == nil {
			_, err = io.Copy(zw, src)
			if err == nil {
				err = zw.Close()
			}
			if err == nil {
				res.sum = ObjectSum{Sum: zw.Sum(), RawSize: zw.RawSize(), StoredSize: zw.StoredSize()}
			}
		}
		slots.release()
		// Closing the pipe with an error makes the store's Put fail and
		// abort its upload instead of committing a short object.
		pw.CloseWithError(err)
		res.err = err
		done <- res
	}()
	putErr := store(ctx, key, pr)
	pr.CloseWithError(errors.New("upload finished")) // unblocks the encoder if the store stopped reading
	res := <-done
	if res.err != nil && putErr == nil {
		putErr = res.err
	}
	if putErr != nil {
		return ObjectSum{}, fmt.Errorf("store %s in %s: %w", key, r.store, putErr)
	}
	return res.sum, nil
}

// Get opens key and returns a reader of its raw bytes. The reader verifies
// the checksum: its final Read returns io.EOF only when the object is
// intact, otherwise an error wrapping codec.ErrCorrupt. Callers must not
// treat the bytes as valid before that EOF.
func (r *Repo) Get(ctx context.Context, key string) (*Object, error) {
	rc, err := r.store.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	zr, err := r.codec.NewReader(rc, r.keys())
	if err != nil {
		rc.Close()
		return nil, fmt.Errorf("%s in %s: %w", key, r.store, err)
	}
	return &Object{key: key, store: r.store.String(), body: rc, r: zr}, nil
}

// Object is a verified stream of one stored object's raw bytes.
type Object struct {
	key, store string
	body       io.ReadCloser
	r          *codec.Reader
}

func (o *Object) Read(p []byte) (int, error) {
	n, err := o.r.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("%s in %s: %w", o.key, o.store, err)
	}
	return n, err
}

// Sum returns the raw bytes' checksum once Read returned io.EOF.
func (o *Object) Sum() string { return o.r.Sum() }

// Close releases the stream.
func (o *Object) Close() error {
	err := o.r.Close()
	if cerr := o.body.Close(); err == nil {
		err = cerr
	}
	return err
}

// randomSuffix names probe objects.
func randomSuffix() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}
