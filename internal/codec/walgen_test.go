package codec

import (
	"encoding/binary"
	"math/rand/v2"
)

// walLike returns n bytes that look like a PostgreSQL WAL segment to a
// compressor: 8 KiB pages with page headers, record headers with increasing
// LSNs and xids and random CRCs, heap tuples made of counters, words and
// random identifiers, full-page images, some incompressible payloads (toasted
// or encrypted columns), and a zero-filled tail (the rest of a segment after a
// WAL switch). The same seed always gives the same bytes.
func walLike(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 0x5741_4c46))
	words := []string{"alpha", "order", "customer", "pending", "shipped", "invoice", "berlin",
		"paris", "lisbon", "total", "amount", "EUR", "USD", "status", "active", "2024-06-01"}
	out := make([]byte, n)
	busy := n * 7 / 10 // the last 30% stays zero
	const page = 8192
	lsn := uint64(0x3_0000_0000)
	xid := uint32(1_000_000)
	pos := 0
	put := func(b []byte) {
		for len(b) > 0 && pos < busy {
			if pos%page == 0 { // page header
				var ph [24]byte
				binary.LittleEndian.PutUint16(ph[0:], 0xD110)
				binary.LittleEndian.PutUint16(ph[2:], 0x0005)
				binary.LittleEndian.PutUint32(ph[4:], 1)
				binary.LittleEndian.PutUint64(ph[8:], lsn+uint64(pos))
				pos += copy(out[pos:busy], ph[:])
				continue
			}
			end := min(busy, (pos/page+1)*page)
			m := copy(out[pos:end], b)
			pos += m
			b = b[m:]
		}
	}
	rec := make([]byte, 0, page)
	for pos < busy {
		rec = rec[:0]
		var hdr [24]byte
		kind := rng.IntN(100)
		xid++
		binary.LittleEndian.PutUint32(hdr[4:], xid)
		binary.LittleEndian.PutUint64(hdr[8:], lsn+uint64(pos))
		hdr[16] = byte(kind % 4 << 4)
		hdr[17] = 10                                          // heap rmgr
		binary.LittleEndian.PutUint32(hdr[20:], rng.Uint32()) // CRC: random
		rec = append(rec, hdr[:]...)
		tuple := func() {
			var t [23]byte // tuple header
			binary.LittleEndian.PutUint32(t[0:], xid)
			binary.LittleEndian.PutUint16(t[18:], 4)
			rec = append(rec, t[:]...)
			rec = binary.LittleEndian.AppendUint64(rec, uint64(xid)*3)
			rec = binary.LittleEndian.AppendUint32(rec, uint32(rng.IntN(100000)))
			for range 1 + rng.IntN(4) {
				w := words[rng.IntN(len(words))]
				rec = append(rec, byte(len(w)<<1|1))
				rec = append(rec, w...)
			}
			var id [16]byte
			for i := range id {
				id[i] = byte(rng.Uint32())
			}
			rec = append(rec, id[:]...)
		}
		switch {
		case kind < 60: // heap insert/update
			tuple()
		case kind < 70: // full-page image: many tuples, hole removed
			for range 20 + rng.IntN(40) {
				tuple()
			}
		case kind < 75: // incompressible payload
			for range 200 + rng.IntN(1800) {
				rec = append(rec, byte(rng.Uint32()))
			}
		default: // commit record
			rec = binary.LittleEndian.AppendUint64(rec, uint64(0x2c0000000)+uint64(xid))
		}
		binary.LittleEndian.PutUint32(rec[0:], uint32(len(rec)))
		for len(rec)%8 != 0 {
			rec = append(rec, 0)
		}
		put(rec)
	}
	return out
}
