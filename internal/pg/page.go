package pg

import (
	"encoding/binary"
)

// PageSize is the size of a relation data page (BLCKSZ). walferry only
// supports the default 8 KiB block size.
const PageSize = 8192

// RelSegmentBlocks is the number of pages in one segment file of a relation
// with PostgreSQL's default build options (RELSEG_SIZE: 1 GiB / PageSize; a
// cluster's own value is ControlData.RelSegSize). Page k of segment file
// "<relfilenode>.N" is block N*RelSegmentBlocks + k of the relation; that
// block number is what PageChecksum and VerifyPage take.
const RelSegmentBlocks = 131072

// Offsets of the page header fields (PageHeaderData in
// src/include/storage/bufpage.h) that this file reads. All are little-endian:
// walferry, like PostgreSQL's data files, assumes a little-endian machine.
const (
	pageLSNOffset      = 0  // pd_lsn: xlogid uint32, xrecoff uint32
	pageChecksumOffset = 8  // pd_checksum uint16
	pageUpperOffset    = 14 // pd_upper uint16
)

// PageLSN returns pd_lsn, the LSN just past the last WAL record that changed
// the page. page must hold at least the 8-byte LSN.
func PageLSN(page []byte) LSN {
	_ = page[pageLSNOffset+7]
	hi := binary.LittleEndian.Uint32(page[pageLSNOffset:])
	lo := binary.LittleEndian.Uint32(page[pageLSNOffset+4:])
	return LSN(uint64(hi)<<32 | uint64(lo))
}

// PageIsNew reports whether the page was never initialized (pd_upper is
// zero), like PostgreSQL's PageIsNew. Such a page carries no checksum.
// page must hold at least the first 16 bytes of the header.
func PageIsNew(page []byte) bool {
	return binary.LittleEndian.Uint16(page[pageUpperOffset:]) == 0
}

// nSums is the number of interleaved FNV lanes (N_SUMS). It is part of the
// algorithm: another value gives other checksums.
const nSums = 32

// fnvPrime is the 32-bit FNV prime (FNV_PRIME).
const fnvPrime = 16777619

// checksumBaseOffsets are the initial values of the lanes
// (checksumBaseOffsets in src/include/storage/checksum_impl.h).
var checksumBaseOffsets = [nSums]uint32{
	0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A,
	0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
	0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA,
	0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
	0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE,
	0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
	0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E,
	0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
}

// checksumRow is the number of bytes consumed per round: one uint32 per lane.
const checksumRow = nSums * 4

// PageChecksum computes a page's data checksum exactly as PostgreSQL's
// pg_checksum_page does. The stored pd_checksum is read as zero, and page
// is not modified. blkno is the block number within the relation fork, not
// within the segment file: see RelSegmentBlocks.
//
// The algorithm is PostgreSQL's FNV-1a variant: the page is read as 64 rows
// of 32 little-endian uint32 words, each column hashed in its own lane with
// h = (h^v)*FNV_PRIME ^ ((h^v)>>17), two rounds of zeros mixed in at the
// end, the lanes xor-folded, xored with blkno, and reduced to
// (sum % 65535) + 1, so a checksum is never zero.
//
// PostgreSQL only checksums initialized pages; the value for a page where
// PageIsNew is true is computed all the same but has no meaning. A slice
// that is not PageSize bytes is not a page: its checksum is 0, which no
// page has.
func PageChecksum(page []byte, blkno uint32) uint16 {
	if len(page) != PageSize {
		return 0
	}
	sums := checksumBaseOffsets

	// Row 0 holds the header, where the upper half of word 2 is pd_flags
	// and the lower half pd_checksum, which counts as zero.
	row := page[:checksumRow:checksumRow]
	for j := range sums {
		v := binary.LittleEndian.Uint32(row[j*4:])
		if j == pageChecksumOffset/4 {
			v &= 0xFFFF0000
		}
		t := sums[j] ^ v
		sums[j] = t*fnvPrime ^ t>>17
	}
	for off := checksumRow; off < PageSize; off += checksumRow {
		row := page[off : off+checksumRow : off+checksumRow]
		for j := range sums {
			t := sums[j] ^ binary.LittleEndian.Uint32(row[j*4:])
			sums[j] = t*fnvPrime ^ t>>17
		}
	}

	var result uint32
	for j := range sums {
		t := sums[j]
		t = t*fnvPrime ^ t>>17 // two rounds with value 0
		t = t*fnvPrime ^ t>>17
		result ^= t
	}
	return uint16((result^blkno)%65535 + 1)
}

// VerifyPage reports whether a page read from a cluster with data checksums
// passes PostgreSQL's checksum test (PageIsVerifiedExtended): a new page
// (PageIsNew) passes only if all of its bytes are zero; any other page
// passes if its pd_checksum equals PageChecksum(page, blkno).
//
// blkno is the block number within the relation fork: for page k of segment
// file "<relfilenode>.N" (or "<relfilenode>_fsm.N", ...) the caller passes
// N*RelSegmentBlocks + k. Unlike PostgreSQL, VerifyPage does not check the
// rest of the header for sanity. A slice that is not PageSize bytes does
// not verify.
func VerifyPage(page []byte, blkno uint32) (ok bool) {
	if len(page) != PageSize {
		return false
	}
	if PageIsNew(page) {
		return allZero(page)
	}
	return binary.LittleEndian.Uint16(page[pageChecksumOffset:]) == PageChecksum(page, blkno)
}

// allZero reports whether every byte of b is zero.
func allZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
