package status

import (
	"encoding/json"
	"io"
	"testing"
)

// FuzzReport decodes a sidecar's /status answer of any content and
// prints it as `walferry status` does: never a panic.
func FuzzReport(f *testing.F) {
	b, err := json.Marshal(New(now))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte(`{"version":1,"role":"primary","problems":[{"severity":"critical","what":"x"}]}`))
	f.Add([]byte(`{"version":99,"slots":[{}],"backups":{"newest":null}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var r Report
		if json.Unmarshal(b, &r) != nil {
			return
		}
		WriteText(io.Discard, r)
		_ = Worst(r)
		for _, p := range r.Problems {
			_, _ = ParseSeverity(string(p.Severity))
		}
	})
}
