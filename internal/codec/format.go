package codec

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/walferry/walferry/internal/failure"
)

// Errors returned by readers. Match them with errors.Is; the messages wrapped
// around them say what exactly was found.
var (
	// ErrCorrupt means the stored bytes are not a valid object: a checksum or
	// authentication tag mismatch, a truncated or extended object, a malformed
	// header, record or compressed stream. The data must not be used. Errors
	// from the underlying reader (network, disk) are returned as they are and
	// do not match ErrCorrupt.
	ErrCorrupt = failure.New(failure.Corrupt, "object corrupt")

	// ErrWrongKey means the object is encrypted with a key whose id differs
	// from every configured key's id.
	ErrWrongKey = failure.New(failure.Permission, "wrong encryption key")

	// ErrNoKey means the object is encrypted and no key is configured.
	ErrNoKey = failure.New(failure.Permission, "no encryption key configured")

	// ErrNotEncrypted means an encryption key is configured but the object is
	// not encrypted, so its content cannot be authenticated.
	ErrNotEncrypted = errors.New("object not encrypted")

	// ErrUnsupportedVersion means the object is intact but was written in a
	// format version this walferry does not know (written by a newer one).
	ErrUnsupportedVersion = errors.New("unsupported object format version")
)

// Layout constants; docs/object-format.md is the reference.
const (
	magic          = "WFRY"
	formatVersion  = 1
	headerSize     = 56 // version 1
	flagEncrypted  = 1 << 0
	flagNoRawSum   = 1 << 1 // the trailer's SHA-256 is zero: integrity is the caller's
	knownFlags     = flagEncrypted | flagNoRawSum
	saltOffset     = 20
	keyIDOffset    = 12
	objSaltSize    = 32
	defaultChunkLg = 16 // 64 KiB records
	minChunkLg     = 10
	maxChunkLg     = 20

	recordHeaderSize = 4
	trailerBit       = 1 << 31
	trailerSize      = 48 // raw length, record count, SHA-256
	crcSize          = 4
	tagSize          = 16 // AES-GCM
	nonceSize        = 12
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// header is the decoded fixed header of a version-1 object.
type header struct {
	raw         [headerSize]byte
	crc         uint32
	compression Compression
	encrypted   bool
	noRawSum    bool
	chunkSize   int
	keyID       [keyIDSize]byte
	salt        [objSaltSize]byte
}

func (h *header) keyIDString() string { return hex.EncodeToString(h.keyID[:]) }

// checkSize is the size of the integrity check after each record's payload.
func (h *header) checkSize() int {
	if h.encrypted {
		return tagSize
	}
	return crcSize
}

// encodeHeader fills h.raw and h.crc from the fields.
func (h *header) encode() {
	b := h.raw[:]
	clear(b)
	copy(b, magic)
	b[4] = formatVersion
	b[5] = headerSize
	b[6] = byte(h.compression)
	if h.encrypted {
		b[7] |= flagEncrypted
	}
	if h.noRawSum {
		b[7] |= flagNoRawSum
	}
	b[8] = byte(log2(h.chunkSize))
	copy(b[keyIDOffset:], h.keyID[:])
	copy(b[saltOffset:], h.salt[:])
	h.crc = crc32.Checksum(b[:headerSize-4], castagnoli)
	binary.BigEndian.PutUint32(b[headerSize-4:], h.crc)
}

func log2(n int) int {
	l := 0
	for n > 1 {
		n >>= 1
		l++
	}
	return l
}

// corruptf returns an error wrapping ErrCorrupt.
func corruptf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, args...)...)
}

// truncated wraps ErrCorrupt and io.ErrUnexpectedEOF.
func truncated(what string, off int64) error {
	return fmt.Errorf("%w: truncated in %s at offset %d: %w", ErrCorrupt, what, off, io.ErrUnexpectedEOF)
}

// readErr classifies an error from io.ReadFull of a part of the object that
// must be present.
func readErr(err error, what string, off int64) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return truncated(what, off)
	}
	return fmt.Errorf("codec: read %s at offset %d: %w", what, off, err)
}

// readHeader reads and verifies the header at the start of r.
func readHeader(r io.Reader) (*header, error) {
	h := &header{}
	b := h.raw[:]
	if _, err := io.ReadFull(r, b[:6]); err != nil {
		return nil, readErr(err, "header", 0)
	}
	if string(b[:4]) != magic {
		return nil, corruptf("bad magic %x, want %x (not a walferry object)", b[:4], magic)
	}
	version, hlen := b[4], int(b[5])
	if version == formatVersion && hlen != headerSize {
		return nil, corruptf("header length %d, want %d for format version %d", hlen, headerSize, version)
	}
	if hlen < 10 {
		return nil, corruptf("header length %d too short", hlen)
	}
	if version != formatVersion {
		// Unknown version: its header still ends in a CRC-32C of the rest,
		// which tells a newer format from a damaged version byte.
		rest := make([]byte, hlen)
		copy(rest, b[:6])
		if _, err := io.ReadFull(r, rest[6:]); err != nil {
			return nil, readErr(err, "header", 6)
		}
		if crc32.Checksum(rest[:hlen-4], castagnoli) != binary.BigEndian.Uint32(rest[hlen-4:]) {
			return nil, corruptf("header checksum mismatch (version byte %d)", version)
		}
		return nil, fmt.Errorf("%w %d (this walferry reads version %d; upgrade it)", ErrUnsupportedVersion, version, formatVersion)
	}
	if _, err := io.ReadFull(r, b[6:]); err != nil {
		return nil, readErr(err, "header", 6)
	}
	if err := h.decode(); err != nil {
		return nil, err
	}
	return h, nil
}

// decode verifies and parses h.raw (magic, version and length already checked).
func (h *header) decode() error {
	b := h.raw[:]
	stored := binary.BigEndian.Uint32(b[headerSize-4:])
	h.crc = crc32.Checksum(b[:headerSize-4], castagnoli)
	if stored != h.crc {
		return corruptf("header checksum mismatch: stored crc32c:%08x computed crc32c:%08x", stored, h.crc)
	}
	h.compression = Compression(b[6])
	if !h.compression.valid() {
		return corruptf("unknown compression %d in header", b[6])
	}
	if b[7]&^knownFlags != 0 {
		return corruptf("unknown header flags %#02x", b[7])
	}
	h.encrypted = b[7]&flagEncrypted != 0
	h.noRawSum = b[7]&flagNoRawSum != 0
	lg := int(b[8])
	if lg < minChunkLg || lg > maxChunkLg {
		return corruptf("record size 2^%d out of range 2^%d..2^%d", lg, minChunkLg, maxChunkLg)
	}
	h.chunkSize = 1 << lg
	if b[9] != 0 || b[10] != 0 || b[11] != 0 {
		return corruptf("reserved header bytes not zero")
	}
	copy(h.keyID[:], b[keyIDOffset:])
	copy(h.salt[:], b[saltOffset:])
	if !h.encrypted {
		var zero [objSaltSize]byte
		if !bytes.Equal(h.keyID[:], zero[:keyIDSize]) || !bytes.Equal(h.salt[:], zero[:]) {
			return corruptf("unencrypted object with key id or salt set")
		}
	}
	return nil
}

// newAEAD returns the AES-256-GCM instance of the object h under master key k.
func newAEAD(k *Key, h *header) (cipher.AEAD, error) {
	sub, err := k.objectKey(h.salt[:], h.raw[:])
	if err != nil {
		return nil, err
	}
	defer clear(sub)
	block, err := aes.NewCipher(sub)
	if err != nil {
		return nil, fmt.Errorf("codec: aes: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("codec: gcm: %w", err)
	}
	return aead, nil
}

// resolveKey returns the AEAD for an encrypted header, or nil for a plain one,
// enforcing the key policy of NewReader.
func resolveKey(h *header, keys KeyResolver) (cipher.AEAD, error) {
	if !h.encrypted {
		if !noKeys(keys) {
			return nil, fmt.Errorf("%w: an encryption key is configured but the object is stored unencrypted; refusing unauthenticated data", ErrNotEncrypted)
		}
		return nil, nil
	}
	id := h.keyIDString()
	if noKeys(keys) {
		return nil, fmt.Errorf("%w: object encrypted with key id %s", ErrNoKey, id)
	}
	k, err := keys.ResolveKey(id)
	if err != nil {
		return nil, err
	}
	if k == nil || k.ID() != id {
		return nil, fmt.Errorf("%w: object encrypted with key id %s; key resolver returned key id %s", ErrWrongKey, id, k.ID())
	}
	return newAEAD(k, h)
}

// recordNonce and recordAD build the GCM nonce and associated data of record i
// with record word w.
func recordNonce(dst *[nonceSize]byte, i uint64) []byte {
	clear(dst[:4])
	binary.BigEndian.PutUint64(dst[4:], i)
	return dst[:]
}

func recordAD(dst *[12]byte, i uint64, word uint32) []byte {
	binary.BigEndian.PutUint64(dst[:8], i)
	binary.BigEndian.PutUint32(dst[8:], word)
	return dst[:]
}

// recordCRC is the CRC-32C of an unencrypted record: over the header CRC, the
// record index, the record word and the payload.
// pre is scratch space for the 16-byte prefix.
func recordCRC(pre *[16]byte, hdrCRC uint32, i uint64, word uint32, payload []byte) uint32 {
	binary.BigEndian.PutUint32(pre[0:], hdrCRC)
	binary.BigEndian.PutUint64(pre[4:], i)
	binary.BigEndian.PutUint32(pre[12:], word)
	c := crc32.Update(0, castagnoli, pre[:])
	return crc32.Update(c, castagnoli, payload)
}

// trailer is the content of the trailer record.
type trailer struct {
	rawSize int64
	records uint64
	sum     [sha256.Size]byte
}

func (t *trailer) encode(b []byte) {
	binary.BigEndian.PutUint64(b[0:], uint64(t.rawSize))
	binary.BigEndian.PutUint64(b[8:], t.records)
	copy(b[16:], t.sum[:])
}

func (t *trailer) decode(b []byte) error {
	raw := binary.BigEndian.Uint64(b[0:])
	if raw > 1<<62 {
		return corruptf("trailer raw size %d out of range", raw)
	}
	t.rawSize = int64(raw)
	t.records = binary.BigEndian.Uint64(b[8:])
	copy(t.sum[:], b[16:])
	return nil
}

// FormatSum renders a SHA-256 digest as "sha256:<64 hex digits>", the form of
// Writer.Sum, Reader.Sum and Info.Sum.
func FormatSum(sum [sha256.Size]byte) string {
	return "sha256:" + hex.EncodeToString(sum[:])
}
