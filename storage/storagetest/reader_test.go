package storagetest

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

func TestReaderConsistent(t *testing.T) {
	const size = 10_007
	whole := Bytes(42, size)
	// Reading in odd-sized chunks gives the same stream as one ReadAt.
	var buf bytes.Buffer
	r := NewReader(42, size)
	chunk := make([]byte, 13)
	for {
		n, err := r.Read(chunk)
		buf.Write(chunk[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(buf.Bytes(), whole) {
		t.Fatal("chunked Read differs from ReadAt")
	}
	// Every offset, through Seek.
	for _, off := range []int64{0, 1, 7, 8, 9, 4095, size - 1, size} {
		r := NewReader(42, size)
		if _, err := r.Seek(off, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, whole[off:]) {
			t.Errorf("after Seek(%d), stream differs", off)
		}
	}
	if bytes.Equal(Bytes(1, 64), Bytes(2, 64)) {
		t.Error("seeds 1 and 2 give the same stream")
	}
}

func TestVerify(t *testing.T) {
	good := Bytes(5, 1000)
	bad := bytes.Clone(good)
	bad[321] ^= 1
	tests := []struct {
		name    string
		data    []byte
		wantErr string // "" for success
	}{
		{"equal", good, ""},
		{"empty", nil, "got 0 bytes"},
		{"short", good[:999], "got 999 bytes"},
		{"long", append(bytes.Clone(good), 0), "got 1001 bytes"},
		{"flipped", bad, "offset 321"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := Verify(bytes.NewReader(tc.data), 5, 1000)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("Verify = %v, want nil", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("Verify = %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
	if got, want := Digest(5, 1000), Digest(5, 1000); got != want || len(got) != 64 {
		t.Errorf("Digest = %q, %q", got, want)
	}
}
