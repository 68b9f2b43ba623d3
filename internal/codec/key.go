package codec

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"golang.org/x/crypto/scrypt"
)

// KeySize is the length in bytes of a repository master key.
const KeySize = 32

// SaltSize is the length in bytes of the salts NewSalt returns.
const SaltSize = 32

// minSaltSize is the shortest salt DeriveKey accepts.
const minSaltSize = 16

// Scrypt parameters of DeriveKey: N=2^15, r=8, p=1 costs 32 MiB of memory and
// roughly 50-100 ms of CPU. They are part of the repository format: changing
// them changes every derived key.
const (
	scryptN = 1 << 15
	scryptR = 8
	scryptP = 1
)

// keyIDSize is the length of a key id in the object header.
const keyIDSize = 8

// Key is a repository master key. Objects are never encrypted with it
// directly: each object derives its own subkey from it and the object's random
// salt (HKDF-SHA256), see docs/object-format.md.
//
// A Key never reveals its secret when printed: String, GoString, Format (every
// fmt verb) and LogValue show only its ID. A *Key is safe for concurrent use.
type Key struct {
	// material is a closure rather than a field holding bytes, so that no
	// fmt verb or reflection-based encoder reaching a Key (even a copied
	// value in an unexported field) can print the secret.
	material func() *keyMaterial
}

type keyMaterial struct {
	secret [KeySize]byte
	id     [keyIDSize]byte
}

// mat returns the key material, nil for a nil or zero Key.
func (k *Key) mat() *keyMaterial {
	if k == nil || k.material == nil {
		return nil
	}
	return k.material()
}

// NewKey returns a master key holding a copy of secret, which must be exactly
// KeySize (32) uniformly random bytes, e.g. read from a Kubernetes Secret.
// Use DeriveKey for passphrases.
func NewKey(secret []byte) (*Key, error) {
	if len(secret) != KeySize {
		return nil, fmt.Errorf("codec: new key: secret is %d bytes, want %d", len(secret), KeySize)
	}
	m := &keyMaterial{}
	copy(m.secret[:], secret)
	mac := hmac.New(sha256.New, m.secret[:])
	mac.Write([]byte("walferry key id v1"))
	copy(m.id[:], mac.Sum(nil))
	return &Key{material: func() *keyMaterial { return m }}, nil
}

// DeriveKey derives the repository master key from a passphrase with scrypt
// (N=32768, r=8, p=1; ~32 MiB and tens of milliseconds, so derive once per
// process and reuse the Key). salt must be at least 16 bytes; it is not secret
// and the caller stores it in the repository metadata (NewSalt makes one). The
// same passphrase and salt always give the same Key.
func DeriveKey(passphrase, salt []byte) (*Key, error) {
	if len(passphrase) == 0 {
		return nil, errors.New("codec: derive key: empty passphrase")
	}
	if len(salt) < minSaltSize {
		return nil, fmt.Errorf("codec: derive key: salt is %d bytes, want at least %d", len(salt), minSaltSize)
	}
	secret, err := scrypt.Key(passphrase, salt, scryptN, scryptR, scryptP, KeySize)
	if err != nil {
		return nil, fmt.Errorf("codec: derive key: %w", err)
	}
	defer clear(secret)
	return NewKey(secret)
}

// NewSalt returns SaltSize fresh random bytes for DeriveKey.
func NewSalt() ([]byte, error) {
	salt := make([]byte, SaltSize)
	if _, err := io.ReadFull(rand.Reader, salt); err != nil {
		return nil, fmt.Errorf("codec: new salt: %w", err)
	}
	return salt, nil
}

// ID returns the key's fingerprint: 16 lower-case hex digits, stable for a
// given secret and not secret itself (the first 8 bytes of
// HMAC-SHA256(secret, "walferry key id v1")). It is stored in the header of
// every object encrypted under the key, so that reading with another key fails
// fast with ErrWrongKey. A nil Key has the empty ID.
func (k *Key) ID() string {
	m := k.mat()
	if m == nil {
		return ""
	}
	return hex.EncodeToString(m.id[:])
}

// String returns a redacted description naming only the key's ID.
func (k *Key) String() string {
	if k.mat() == nil {
		return "codec.Key(nil)"
	}
	return "codec.Key{id:" + k.ID() + " secret:REDACTED}"
}

// GoString is String: %#v never shows the secret.
func (k *Key) GoString() string { return k.String() }

// Format prints String for every verb, so that no fmt verb (%x, %d, %+v, ...)
// can reach the secret.
func (k *Key) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, k.String()) }

// LogValue implements slog.LogValuer: only the ID is logged.
func (k *Key) LogValue() slog.Value {
	if k == nil {
		return slog.StringValue("<nil>")
	}
	return slog.GroupValue(slog.String("id", k.ID()), slog.String("secret", "REDACTED"))
}

// MarshalText keeps the secret out of encoding/json, YAML and friends: it
// encodes the same redacted text as String.
func (k *Key) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// objectKey derives the subkey of one object from the master key, the object's
// salt and its whole header (so any change to the header changes the key).
func (k *Key) objectKey(salt, header []byte) ([]byte, error) {
	info := subkeyInfo + string(header)
	sub, err := hkdf.Key(sha256.New, k.mat().secret[:], salt, info, KeySize)
	if err != nil {
		return nil, fmt.Errorf("codec: derive object key: %w", err)
	}
	return sub, nil
}

// subkeyInfo prefixes the HKDF info of every object subkey.
const subkeyInfo = "walferry object v1\x00"

// KeyResolver finds the key an encrypted object needs, by the key ID stored
// in the object's header. Implementations must be safe for concurrent use.
type KeyResolver interface {
	// ResolveKey returns the configured key whose ID is id. When none matches
	// it returns an error wrapping ErrWrongKey that names the object's key id
	// and the configured ones; when no key is configured at all, an error
	// wrapping ErrNoKey.
	ResolveKey(id string) (*Key, error)
}

// ResolveKey makes a single *Key a KeyResolver: it returns k when id is k's ID.
func (k *Key) ResolveKey(id string) (*Key, error) {
	if k.mat() == nil {
		return nil, fmt.Errorf("%w: object encrypted with key id %s", ErrNoKey, id)
	}
	if id != k.ID() {
		return nil, fmt.Errorf("%w: object encrypted with key id %s; configured key id is %s", ErrWrongKey, id, k.ID())
	}
	return k, nil
}

// Keys is a KeyResolver over several keys, e.g. the current key and the
// previous ones during a key rotation. Nil entries are ignored.
type Keys []*Key

// ResolveKey returns the key in ks whose ID is id.
func (ks Keys) ResolveKey(id string) (*Key, error) {
	var ids []string
	for _, k := range ks {
		if k.mat() == nil {
			continue
		}
		if k.ID() == id {
			return k, nil
		}
		ids = append(ids, k.ID())
	}
	switch len(ids) {
	case 0:
		return nil, fmt.Errorf("%w: object encrypted with key id %s", ErrNoKey, id)
	case 1:
		return nil, fmt.Errorf("%w: object encrypted with key id %s; configured key id is %s", ErrWrongKey, id, ids[0])
	}
	return nil, fmt.Errorf("%w: object encrypted with key id %s; configured key ids are %s", ErrWrongKey, id, strings.Join(ids, ", "))
}

// noKeys reports whether keys configures no key at all (nil interface, nil
// *Key or an empty Keys).
func noKeys(keys KeyResolver) bool {
	switch ks := keys.(type) {
	case nil:
		return true
	case *Key:
		return ks.mat() == nil
	case Keys:
		for _, k := range ks {
			if k.mat() != nil {
				return false
			}
		}
		return true
	}
	return false
}
