package restore

import "testing"

// FuzzParseTargetTime: --target-time of any content parses or fails,
// never panics.
func FuzzParseTargetTime(f *testing.F) {
	for _, s := range []string{"2026-11-22 10:15:00+00", "2026-11-22T10:15:00Z", "2026-11-22 10:15:00.123456+05:30", "nope", "", "99999-01-01 00:00:00+00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		_, _, _ = parseTargetTime(s)
	})
}

// FuzzParseTablespaceMap: a backup's tablespace_map and the
// --tablespace-map flags of any content parse or fail, never panic.
func FuzzParseTablespaceMap(f *testing.F) {
	f.Add("16385 /srv/pg/ts1\n16386 /srv/pg/ts 2\n", "16385=/srv/ts1")
	f.Add("", "name=/x")
	f.Add("x\n\\\n", "=")
	f.Add("1 ../../etc\n", "1=../../ts")
	f.Fuzz(func(t *testing.T, file, flag string) {
		_, _ = parseTablespaceMapFile(file)
		_, _ = parseTablespaceMap([]string{flag})
	})
}
