package codec

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestDeriveKey(t *testing.T) {
	salt := bytes.Repeat([]byte{0x5a}, 16)
	k1, err := DeriveKey([]byte("correct horse battery staple"), salt)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := DeriveKey([]byte("correct horse battery staple"), salt)
	if err != nil {
		t.Fatal(err)
	}
	if k1.ID() != k2.ID() || k1.mat().secret != k2.mat().secret {
		t.Fatal("same passphrase and salt gave different keys")
	}
	// Pinned: the derivation is part of the repository format.
	if got, want := k1.ID(), "cf97707ae80a4dab"; got != want {
		t.Errorf("DeriveKey ID = %s, want %s", got, want)
	}
	other, err := DeriveKey([]byte("correct horse battery staple"), bytes.Repeat([]byte{0x5b}, 16))
	if err != nil {
		t.Fatal(err)
	}
	if other.ID() == k1.ID() {
		t.Error("different salts gave the same key id")
	}
	for _, tt := range []struct {
		pass, salt []byte
	}{
		{nil, salt},
		{[]byte("x"), salt[:15]},
	} {
		if _, err := DeriveKey(tt.pass, tt.salt); err == nil {
			t.Errorf("DeriveKey(%q, %d-byte salt) succeeded, want error", tt.pass, len(tt.salt))
		}
	}
}

func TestNewSalt(t *testing.T) {
	a, err := NewSalt()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := NewSalt()
	if len(a) != SaltSize || bytes.Equal(a, b) {
		t.Errorf("NewSalt: len %d, two salts equal: %v", len(a), bytes.Equal(a, b))
	}
}

func TestNewKey(t *testing.T) {
	for _, n := range []int{0, 16, 31, 33} {
		if _, err := NewKey(make([]byte, n)); err == nil {
			t.Errorf("NewKey(%d bytes) succeeded", n)
		}
	}
	secret := bytes.Repeat([]byte{1}, KeySize)
	k, err := NewKey(secret)
	if err != nil {
		t.Fatal(err)
	}
	secret[0] = 2 // the key keeps its own copy
	if k.mat().secret[0] != 1 {
		t.Error("NewKey aliases the caller's slice")
	}
	if id := k.ID(); len(id) != 16 {
		t.Errorf("ID %q, want 16 hex digits", id)
	}
}

// TestKeyRedacted: no way of printing or logging a key shows its secret.
func TestKeyRedacted(t *testing.T) {
	secret := bytes.Repeat([]byte{0xAB}, KeySize)
	k, err := NewKey(secret)
	if err != nil {
		t.Fatal(err)
	}
	forbidden := []string{hex.EncodeToString(secret[:4]), strings.ToUpper(hex.EncodeToString(secret[:4])), "171 171", "\xab\xab"}
	type cfg struct {
		Key  *Key
		Name string
	}
	type private struct {
		k  Key
		kp *Key
	}
	var outs []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%T"} {
		for _, v := range []any{k, *k, cfg{k, "repo"}, private{*k, k}, []*Key{k}, map[string]Key{"a": *k}} {
			outs = append(outs, fmt.Sprintf(verb, v))
		}
	}
	var logBuf bytes.Buffer
	slog.New(slog.NewTextHandler(&logBuf, nil)).Info("x", "key", k)
	slog.New(slog.NewJSONHandler(&logBuf, nil)).Info("x", "key", k, "cfg", cfg{k, "repo"})
	outs = append(outs, logBuf.String())
	js, err := json.Marshal(cfg{k, "repo"})
	if err != nil {
		t.Fatal(err)
	}
	outs = append(outs, string(js))
	for _, out := range outs {
		for _, f := range forbidden {
			if strings.Contains(out, f) {
				t.Errorf("secret leaked: %q contains %q", out, f)
			}
		}
	}
	if s := k.String(); !strings.Contains(s, k.ID()) || !strings.Contains(s, "REDACTED") {
		t.Errorf("String() = %q, want the id and REDACTED", s)
	}
}

func TestKeyErrors(t *testing.T) {
	k1, k2, k3 := testKey(t, 1), testKey(t, 2), testKey(t, 3)
	encrypted, _ := encode(t, nil, []byte("secret WAL"), Options{Compression: LZ4, Key: k1}, 0)
	plain, _ := encode(t, nil, []byte("plain WAL"), Options{Compression: LZ4}, 0)
	var nilKey *Key
	tests := []struct {
		name    string
		obj     []byte
		keys    KeyResolver
		want    error
		message string
	}{
		{"right key", encrypted, k1, nil, ""},
		{"keyring", encrypted, Keys{k2, k1}, nil, ""},
		{"wrong key", encrypted, k2, ErrWrongKey,
			fmt.Sprintf("wrong encryption key: object encrypted with key id %s; configured key id is %s", k1.ID(), k2.ID())},
		{"wrong keyring", encrypted, Keys{k2, nil, k3}, ErrWrongKey,
			fmt.Sprintf("object encrypted with key id %s; configured key ids are %s, %s", k1.ID(), k2.ID(), k3.ID())},
		{"no key", encrypted, nil, ErrNoKey, "no encryption key configured: object encrypted with key id " + k1.ID()},
		{"nil *Key", encrypted, nilKey, ErrNoKey, "object encrypted with key id"},
		{"empty keyring", encrypted, Keys{}, ErrNoKey, "object encrypted with key id"},
		{"plain without key", plain, nil, nil, ""},
		{"plain with nil *Key", plain, nilKey, nil, ""},
		{"plain with key", plain, k1, ErrNotEncrypted, "refusing unauthenticated data"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewReader(bytes.NewReader(tt.obj), tt.keys)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("NewReader err = %v, want %v", err, tt.want)
			}
			if err != nil && !strings.Contains(err.Error(), tt.message) {
				t.Errorf("message %q does not contain %q", err, tt.message)
			}
			if err != nil && errors.Is(err, ErrCorrupt) {
				t.Errorf("key error %v also matches ErrCorrupt", err)
			}
			_, ierr := ReadInfo(bytes.NewReader(tt.obj), int64(len(tt.obj)), tt.keys)
			if !errors.Is(ierr, tt.want) || (tt.want == nil) != (ierr == nil) {
				t.Errorf("ReadInfo err = %v, want %v", ierr, tt.want)
			}
		})
	}
}

// lyingResolver claims to have the key but returns another one.
type lyingResolver struct{ k *Key }

func (l lyingResolver) ResolveKey(string) (*Key, error) { return l.k, nil }

func TestResolverReturningOtherKey(t *testing.T) {
	obj, _ := encode(t, nil, []byte("x"), Options{Key: testKey(t, 1)}, 0)
	_, err := NewReader(bytes.NewReader(obj), lyingResolver{testKey(t, 2)})
	if !errors.Is(err, ErrWrongKey) {
		t.Errorf("err = %v, want ErrWrongKey", err)
	}
}

// TestEncryptedHidesContent: the stored bytes of an encrypted object contain
// neither the raw bytes nor their checksum, and two encryptions differ.
func TestEncryptedHidesContent(t *testing.T) {
	raw := bytes.Repeat([]byte("TOPSECRET-TUPLE "), 4096)
	k := testKey(t, 9)
	a, w := encode(t, nil, raw, Options{Key: k}, 0)
	b, _ := encode(t, nil, raw, Options{Key: k}, 0)
	sum, _ := hex.DecodeString(strings.TrimPrefix(w.Sum(), "sha256:"))
	if bytes.Contains(a, []byte("TOPSECRET")) || bytes.Contains(a, sum[:8]) {
		t.Error("encrypted object shows its content or checksum")
	}
	if bytes.Equal(a[headerSize:], b[headerSize:]) {
		t.Error("two encryptions of the same content are identical")
	}
}
