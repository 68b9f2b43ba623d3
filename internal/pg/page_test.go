package pg_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/pg/pgtest"
)

// referenceChecksum is a line-by-line transcription of pg_checksum_page
// (src/include/storage/checksum_impl.h), written for clarity rather than
// speed, to check the fast version against.
func referenceChecksum(page []byte, blkno uint32) uint16 {
	const nSums, prime = 32, 16777619
	base := [nSums]uint32{
		0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A,
		0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
		0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA,
		0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
		0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE,
		0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
		0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E,
		0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
	}
	p := bytes.Clone(page)
	p[8], p[9] = 0, 0 // pd_checksum = 0
	var data [pg.PageSize / (4 * nSums)][nSums]uint32
	for i := range data {
		for j := range data[i] {
			data[i][j] = binary.LittleEndian.Uint32(p[(i*nSums+j)*4:])
		}
	}
	comp := func(sum *uint32, value uint32) {
		tmp := *sum ^ value
		*sum = tmp*prime ^ (tmp >> 17)
	}
	sums := base
	for i := range data {
		for j := 0; j < nSums; j++ {
			comp(&sums[j], data[i][j])
		}
	}
	for i := 0; i < 2; i++ {
		for j := 0; j < nSums; j++ {
			comp(&sums[j], 0)
		}
	}
	var result uint32
	for _, s := range sums {
		result ^= s
	}
	result ^= blkno
	return uint16(result%65535 + 1)
}

// patternPage is a page whose byte i is i*7+3 (mod 256), with pd_upper
// non-zero.
func patternPage() []byte {
	p := make([]byte, pg.PageSize)
	for i := range p {
		p[i] = byte(i*7 + 3)
	}
	return p
}

func randomPage(r *rand.Rand) []byte {
	p := make([]byte, pg.PageSize)
	for i := 0; i < len(p); i += 8 {
		binary.LittleEndian.PutUint64(p[i:], r.Uint64())
	}
	binary.LittleEndian.PutUint16(p[14:], uint16(r.IntN(pg.PageSize-24)+24)) // not new
	return p
}

// TestPageChecksumKnownAnswers holds values PostgreSQL 15 itself computed
// (pageinspect's page_checksum, see TestPageChecksumMatchesServer), so the
// algorithm is pinned even where no server is installed.
func TestPageChecksumKnownAnswers(t *testing.T) {
	pattern := patternPage()
	ones := bytes.Repeat([]byte{0xFF}, pg.PageSize)
	tests := []struct {
		name  string
		page  []byte
		blkno uint32
		want  uint16
	}{
		{"pattern block 0", pattern, 0, knownPattern0},
		{"pattern block 1", pattern, 1, knownPattern1},
		{"pattern block 131072", pattern, 131072, knownPattern131072},
		{"pattern last block", pattern, 0xFFFFFFFE, knownPatternLast},
		{"all ones block 0", ones, 0, knownOnes0},
		{"all ones block 12345", ones, 12345, knownOnes12345},
	}
	for _, tt := range tests {
		if got := pg.PageChecksum(tt.page, tt.blkno); got != tt.want {
			t.Errorf("%s: PageChecksum = %#04x, want %#04x", tt.name, got, tt.want)
		}
	}
}

// Checksums computed by PostgreSQL 15's pageinspect page_checksum.
const (
	knownPattern0      = 0xAA4C
	knownPattern1      = 0xAA4B
	knownPattern131072 = 0xAA4A
	knownPatternLast   = 0x55B6
	knownOnes0         = 0x0E1C
	knownOnes12345     = 0x3E15
)

func TestPageChecksumMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 200; i++ {
		page := randomPage(r)
		blkno := r.Uint32()
		if i < 10 {
			blkno = uint32(i)
		}
		before := bytes.Clone(page)
		got, want := pg.PageChecksum(page, blkno), referenceChecksum(page, blkno)
		if got != want {
			t.Fatalf("page %d block %d: PageChecksum = %#04x, reference %#04x", i, blkno, got, want)
		}
		if got == 0 {
			t.Fatalf("page %d: checksum 0", i)
		}
		if !bytes.Equal(page, before) {
			t.Fatalf("page %d: PageChecksum modified the page", i)
		}
		// The stored checksum is not part of the input.
		binary.LittleEndian.PutUint16(page[8:], ^binary.LittleEndian.Uint16(page[8:]))
		if again := pg.PageChecksum(page, blkno); again != got {
			t.Fatalf("page %d: checksum depends on pd_checksum: %#04x then %#04x", i, got, again)
		}
		// VerifyPage accepts the page once the checksum is stored, and
		// rejects it at another block number.
		binary.LittleEndian.PutUint16(page[8:], got)
		if !pg.VerifyPage(page, blkno) {
			t.Fatalf("page %d: VerifyPage false with the right checksum", i)
		}
		if pg.VerifyPage(page, blkno^1) {
			t.Fatalf("page %d: VerifyPage true at block %d, stored for %d", i, blkno^1, blkno)
		}
	}
}

func FuzzPageChecksum(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0xAB, 0xCD, 0, 0, 24, 0, 0, 0x20}, uint32(0))
	f.Add(patternPage(), uint32(131072))
	f.Fuzz(func(t *testing.T, data []byte, blkno uint32) {
		page := make([]byte, pg.PageSize)
		copy(page, data)
		if got, want := pg.PageChecksum(page, blkno), referenceChecksum(page, blkno); got != want {
			t.Fatalf("PageChecksum = %#04x, reference %#04x", got, want)
		}
	})
}

func TestPageOfWrongSize(t *testing.T) {
	for _, n := range []int{0, pg.PageSize - 1, pg.PageSize + 1} {
		p := make([]byte, n)
		if got := pg.PageChecksum(p, 0); got != 0 {
			t.Errorf("PageChecksum of %d bytes = %#04x, want 0 (no page has it)", n, got)
		}
		if pg.VerifyPage(p, 0) {
			t.Errorf("VerifyPage of %d bytes succeeded", n)
		}
	}
}

func TestVerifyPageNew(t *testing.T) {
	zero := make([]byte, pg.PageSize)
	for _, blkno := range []uint32{0, 1, 131072, 0xFFFFFFFE} {
		if !pg.VerifyPage(zero, blkno) {
			t.Errorf("all-zero page fails at block %d", blkno)
		}
	}
	// A new page (pd_upper == 0) with any other byte set fails, whatever
	// its checksum says.
	for _, off := range []int{0, 7, 8, 12, 16, 20, 24, 4096, pg.PageSize - 1} {
		page := make([]byte, pg.PageSize)
		page[off] = 0x01
		if !pg.PageIsNew(page) {
			t.Fatalf("byte %d set: PageIsNew false, pd_upper is still 0", off)
		}
		if pg.VerifyPage(page, 0) {
			t.Errorf("new page with byte %d set passes", off)
		}
		binary.LittleEndian.PutUint16(page[8:], pg.PageChecksum(page, 0))
		if pg.VerifyPage(page, 0) {
			t.Errorf("new page with byte %d set and a matching checksum passes", off)
		}
	}
}

func TestPageHeader(t *testing.T) {
	page := make([]byte, 24)
	copy(page, []byte{
		0x16, 0x00, 0x00, 0x00, // xlogid
		0x48, 0xD8, 0x74, 0xB3, // xrecoff
		0x34, 0x12, // pd_checksum
		0x04, 0x00, // pd_flags
		0x1C, 0x00, // pd_lower 28
		0xA0, 0x1F, // pd_upper 8096
		0x00, 0x20, // pd_special 8192
		0x04, 0x20, // pd_pagesize_version
	})
	if got, want := pg.PageLSN(page), pg.LSN(0x16_B374D848); got != want {
		t.Errorf("PageLSN = %v, want %v", got, want)
	}
	if got := pg.PageLSN(page).String(); got != "16/B374D848" {
		t.Errorf("PageLSN = %s, want 16/B374D848", got)
	}
	if pg.PageIsNew(page) {
		t.Errorf("PageIsNew true with pd_upper 8096")
	}
	page[14], page[15] = 0, 0
	if !pg.PageIsNew(page) {
		t.Errorf("PageIsNew false with pd_upper 0")
	}
	page[15] = 0x01 // pd_upper 256
	if pg.PageIsNew(page) {
		t.Errorf("PageIsNew true with pd_upper 256")
	}
	if got := pg.PageLSN(make([]byte, 8)); got != pg.InvalidLSN {
		t.Errorf("PageLSN of zeros = %v", got)
	}
}

// relationFork is one fork file of a relation in a test cluster.
type relationFork struct {
	name string // "t", "t_pkey_fsm", ...
	path string // absolute
	main bool   // main fork: every page is WAL-logged
}

// TestVerifyPageRealCluster reads the files of a table and its index from a
// cluster with data checksums and checks every page as PostgreSQL would.
func TestVerifyPageRealCluster(t *testing.T) {
	t.Parallel()
	c := pgtest.Start(t, pgtest.Options{DataChecksums: true})
	// No autovacuum: nothing may touch the pages between the checkpoint
	// and the reads below.
	c.Exec(t, "CREATE TABLE t (id int PRIMARY KEY, payload text) WITH (autovacuum_enabled = false)")
	c.Exec(t, "INSERT INTO t SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 5000) g")
	c.Exec(t, "DELETE FROM t WHERE id % 10 = 0")
	c.Exec(t, "VACUUM t") // writes hint bits, the free space map and the visibility map
	c.Exec(t, "CHECKPOINT")
	var walText string
	c.QueryRow(t, "SELECT pg_current_wal_lsn()::text").Scan(&walText)
	current, err := pg.ParseLSN(walText)
	if err != nil {
		t.Fatal(err)
	}

	var forks []relationFork
	for _, rel := range []string{"t", "t_pkey"} {
		var rel0 string
		c.QueryRow(t, "SELECT pg_relation_filepath($1)", rel).Scan(&rel0)
		for _, suffix := range []string{"", "_fsm", "_vm"} {
			path := filepath.Join(c.DataDir, rel0+suffix)
			if _, err := os.Stat(path); err != nil {
				if suffix == "" || rel == "t" { // the heap has all three forks after VACUUM
					t.Fatalf("%s%s: %v", rel, suffix, err)
				}
				continue
			}
			forks = append(forks, relationFork{name: rel + suffix, path: path, main: suffix == ""})
		}
	}

	var heapPage []byte // a page of t to corrupt below
	for _, f := range forks {
		data, err := os.ReadFile(f.path)
		if err != nil {
			t.Fatal(err)
		}
		if len(data) == 0 || len(data)%pg.PageSize != 0 {
			t.Fatalf("%s: %d bytes, not a whole number of pages", f.name, len(data))
		}
		pages, initialized := len(data)/pg.PageSize, 0
		for blk := 0; blk < pages; blk++ {
			page := data[blk*pg.PageSize : (blk+1)*pg.PageSize]
			if !pg.VerifyPage(page, uint32(blk)) {
				t.Errorf("%s block %d: stored checksum %#04x, computed %#04x", f.name, blk,
					binary.LittleEndian.Uint16(page[8:]), pg.PageChecksum(page, uint32(blk)))
			}
			if pg.PageIsNew(page) {
				continue
			}
			initialized++
			if pg.VerifyPage(page, uint32(blk)+1) {
				t.Errorf("%s block %d: verifies as block %d too", f.name, blk, blk+1)
			}
			lsn := pg.PageLSN(page)
			if lsn > current {
				t.Errorf("%s block %d: LSN %v is past the server's current %v", f.name, blk, lsn, current)
			}
			if f.main && lsn == pg.InvalidLSN {
				t.Errorf("%s block %d: LSN 0 on a WAL-logged page", f.name, blk)
			}
			if f.name == "t" && blk == 1 {
				heapPage = bytes.Clone(page)
			}
		}
		t.Logf("%s: %d pages, %d initialized", f.name, pages, initialized)
		if f.name == "t" && initialized < 20 {
			t.Errorf("t: only %d initialized pages, want the 5000 rows to fill more", initialized)
		}
	}
	if heapPage == nil {
		t.Fatal("no heap page 1")
	}

	// A single flipped bit anywhere, the stored checksum included, fails.
	for _, off := range []int{0, 7, 8, 9, 10, 15, 24, 100, pg.PageSize / 2, pg.PageSize - 1} {
		for _, bit := range []byte{0x01, 0x80} {
			bad := bytes.Clone(heapPage)
			bad[off] ^= bit
			if pg.VerifyPage(bad, 1) {
				t.Errorf("heap page with byte %d ^ %#x verifies", off, bit)
			}
		}
	}
	if !pg.VerifyPage(heapPage, 1) {
		t.Error("VerifyPage modified the page it was given")
	}
	for _, blk := range []uint32{0, 2, 1 + pg.RelSegmentBlocks} {
		if pg.VerifyPage(heapPage, blk) {
			t.Errorf("heap page 1 verifies as block %d", blk)
		}
	}

	// PostgreSQL's own checker names the same block and computes the same
	// checksum for a page we corrupt in place.
	const corruptBlock = 3
	heapPath := forks[0].path
	data, err := os.ReadFile(heapPath)
	if err != nil {
		t.Fatal(err)
	}
	page := data[corruptBlock*pg.PageSize : (corruptBlock+1)*pg.PageSize]
	page[pg.PageSize-100] ^= 0x40
	want := pg.PageChecksum(page, corruptBlock)
	c.Stop(t, pgtest.StopFast)
	if err := os.WriteFile(heapPath, data, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := c.Command(ctx, "pg_checksums", "--check", "-D", c.DataDir).CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("pg_checksums --check: %v, want exit status 1\n%s", err, out)
	}
	m := regexp.MustCompile(`block (\d+): calculated checksum ([0-9A-F]+) but block contains ([0-9A-F]+)`).FindAllSubmatch(out, -1)
	if len(m) != 1 {
		t.Fatalf("pg_checksums reported %d failures, want 1:\n%s", len(m), out)
	}
	blk, _ := strconv.ParseUint(string(m[0][1]), 10, 32)
	sum, _ := strconv.ParseUint(string(m[0][2]), 16, 16)
	if blk != corruptBlock || uint16(sum) != want {
		t.Errorf("pg_checksums: block %d checksum %#04x; we computed block %d checksum %#04x\n%s", blk, sum, corruptBlock, want, out)
	}
}

// TestPageChecksumMatchesServer gives random and patterned pages to
// pageinspect's page_checksum, which calls pg_checksum_page.
func TestPageChecksumMatchesServer(t *testing.T) {
	t.Parallel()
	c := pgtest.Start(t, pgtest.Options{})
	c.Exec(t, "CREATE EXTENSION pageinspect")
	ones := bytes.Repeat([]byte{0xFF}, pg.PageSize)
	cases := []struct {
		page  []byte
		blkno uint32
	}{
		{patternPage(), 0}, {patternPage(), 1}, {patternPage(), 131072}, {patternPage(), 0xFFFFFFFE},
		{ones, 0}, {ones, 12345},
	}
	r := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 50; i++ {
		cases = append(cases, struct {
			page  []byte
			blkno uint32
		}{randomPage(r), r.Uint32() >> 1})
	}
	for i, tc := range cases {
		var got int16 // smallint
		c.QueryRow(t, "SELECT page_checksum($1::bytea, $2::bigint)", tc.page, int64(tc.blkno)).Scan(&got)
		if ours := pg.PageChecksum(tc.page, tc.blkno); ours != uint16(got) {
			t.Errorf("case %d block %d: PageChecksum = %#04x, server %#04x", i, tc.blkno, ours, uint16(got))
		}
	}
}

func BenchmarkPageChecksum(b *testing.B) {
	page := randomPage(rand.New(rand.NewPCG(5, 6)))
	b.SetBytes(pg.PageSize)
	for b.Loop() {
		pg.PageChecksum(page, 42)
	}
}

func BenchmarkVerifyPage(b *testing.B) {
	page := randomPage(rand.New(rand.NewPCG(5, 6)))
	binary.LittleEndian.PutUint16(page[8:], pg.PageChecksum(page, 42))
	b.SetBytes(pg.PageSize)
	for b.Loop() {
		if !pg.VerifyPage(page, 42) {
			b.Fatal("page does not verify")
		}
	}
}
