package hookproto

import (
	"bufio"
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzDecode reads lines as the daemon and the hooks do and decodes them
// as requests and responses: never a panic, never a line over MaxLine or
// without its newline, and every class maps onto a hook's exit status.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"v":2,"op":"get","name":"000000010000000000000001","dest":"/pg/pg_wal/RECOVERYXLOG","partial":true}` + "\n"))
	f.Add([]byte(`{"v":1,"op":"push","path":"/pg/pg_wal/000000010000000000000001"}` + "\n"))
	f.Add([]byte(`{"v":1,"status":"error","class":"corrupt","message":"x"}` + "\n"))
	f.Add([]byte(`{"v":1,"status":"ok"}` + "\n" + `{"v":1}`))
	f.Add([]byte("no newline"))
	f.Add(bytes.Repeat([]byte("a"), MaxLine+2))
	f.Fuzz(func(t *testing.T, b []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(b), 16)
		for {
			line, err := ReadLine(br)
			if err != nil {
				return
			}
			if len(line) > MaxLine || line[len(line)-1] != '\n' {
				t.Fatalf("ReadLine returned %d bytes ending %q", len(line), line[len(line)-1:])
			}
			var req Request
			_ = json.Unmarshal(line, &req)
			var resp Response
			if json.Unmarshal(line, &resp) == nil {
				if code := ClassExitCode(resp.Class); code < 0 || code > 125 {
					t.Fatalf("class %q maps to exit %d", resp.Class, code)
				}
			}
		}
	})
}
