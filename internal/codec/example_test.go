package codec_test

import (
	"bytes"
	"fmt"
	"io"
	"strings"

	"github.com/walferry/walferry/internal/codec"
)

// One Codec per process; Writers and Readers from it reuse compressors.
func Example() {
	c := codec.New()

	// The repository stores the salt; the passphrase comes from a Secret.
	salt := bytes.Repeat([]byte{1}, codec.SaltSize) // codec.NewSalt() at repo init
	key, err := codec.DeriveKey([]byte("passphrase from a Secret"), salt)
	if err != nil {
		fmt.Println(err)
		return
	}

	compression, level, err := codec.ParseCompression("zstd:3")
	if err != nil {
		fmt.Println(err)
		return
	}
	var stored bytes.Buffer // an upload in real life
	w, err := c.NewWriter(&stored, codec.Options{Compression: compression, Level: level, Key: key})
	if err != nil {
		fmt.Println(err)
		return
	}
	if _, err := io.Copy(w, strings.NewReader("WAL segment bytes")); err != nil {
		fmt.Println(err)
		return
	}
	if err := w.Close(); err != nil { // only now is the object complete
		fmt.Println(err)
		return
	}
	fmt.Println("pushed", w.RawSize(), "bytes,", w.Sum()[:15]+"...")

	// Reading: copy to a temp file, rename only after a clean io.EOF
	// (io.Copy returns nil then); any other error means the data is unusable.
	r, err := c.NewReader(&stored, key)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	var tmp bytes.Buffer // os.CreateTemp in real life
	if _, err := io.Copy(&tmp, r); err != nil {
		fmt.Println("discard temp file:", err)
		return
	}
	fmt.Printf("verified %q, same sum: %v\n", tmp.String(), r.Sum() == w.Sum())
	// Output:
	// pushed 17 bytes, sha256:e86e389b...
	// verified "WAL segment bytes", same sum: true
}
