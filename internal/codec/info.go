package codec

import (
	"bytes"
	"encoding/binary"
	"io"
)

// Info describes a stored object.
type Info struct {
	Version     int         // format version
	Compression Compression // body compression
	Encrypted   bool        // body encrypted with AES-256-GCM
	KeyID       string      // id of the encryption key; "" when not encrypted
	RecordSize  int         // maximum payload bytes per record
	RawSize     int64       // length of the raw content
	Sum         string      // "sha256:<hex>" of the raw content; "" when written with NoRawSum
	StoredSize  int64       // length of the stored object
}

// ReadInfo reads an object's metadata without reading its body: the header at
// offset 0 and the trailer record at the end of the size-byte object at r
// (two small ranged reads). It verifies the header checksum, the trailer's
// checksum or authentication tag (so an encrypted object needs its key, with
// the same policy and errors as NewReader), and that size agrees with the
// number of records the trailer counts. It does not verify the body: only a
// full read with a Reader proves the content matches Sum.
func ReadInfo(r io.ReaderAt, size int64, keys KeyResolver) (Info, error) {
	h, err := readHeader(io.NewSectionReader(r, 0, size))
	if err != nil {
		return Info{}, err
	}
	aead, err := resolveKey(h, keys)
	if err != nil {
		return Info{}, err
	}
	check := h.checkSize()
	recLen := int64(recordHeaderSize + trailerSize + check)
	body := size - headerSize - recLen
	if body < 0 {
		return Info{}, truncated("trailer", size)
	}
	buf := make([]byte, recLen)
	if _, err := r.ReadAt(buf, size-recLen); err != nil {
		return Info{}, readErr(err, "trailer", size-recLen)
	}
	// Check the trailer the way a Reader does, with a frameReader over just
	// this record, then that the body length fits the record count.
	word := binary.BigEndian.Uint32(buf)
	if word != trailerBit|trailerSize {
		return Info{}, corruptf("no trailer record at offset %d (truncated or extended object)", size-recLen)
	}
	records := uint64(0)
	full := int64(recordHeaderSize + h.chunkSize + check)
	if body > 0 {
		records = uint64((body-1)/full) + 1
		last := body - int64(records-1)*full
		if last < int64(recordHeaderSize+1+check) {
			return Info{}, corruptf("object size %d does not match its record layout", size)
		}
	}
	fr := frameReader{
		src:    bytes.NewReader(buf),
		hdrCRC: h.crc,
		aead:   aead,
		chunk:  h.chunkSize,
		check:  check,
		offset: size - recLen,
		buf:    make([]byte, recLen),
		index:  records,
	}
	if err := fr.next(); err != io.EOF {
		if err == nil {
			err = corruptf("no trailer record at offset %d", size-recLen)
		}
		return Info{}, err
	}
	t := fr.trailer
	info := Info{
		Version:     formatVersion,
		Compression: h.compression,
		Encrypted:   h.encrypted,
		RecordSize:  h.chunkSize,
		RawSize:     t.rawSize,
		Sum:         FormatSum(t.sum),
		StoredSize:  size,
	}
	if h.noRawSum {
		info.Sum = ""
	}
	if h.encrypted {
		info.KeyID = h.keyIDString()
	}
	return info, nil
}
