package codec

import (
	"crypto/sha256"
	"hash"
)

// parallelHashMin is the smallest piece whose SHA-256 runs concurrently
// with its compression or decompression: below it a goroutine costs more
// than it saves.
const parallelHashMin = 128 << 10

// rawContent counts an object's raw bytes and, when its SHA-256 is what
// verifies them, hashes them: a Writer as it takes them, a Reader as it
// returns them.
type rawContent struct {
	hash hash.Hash // nil when the raw bytes are not hashed
	size int64
	sum  [sha256.Size]byte // set by finish (by a Reader: or from the trailer)
}

// add counts p and hashes it.
func (rc *rawContent) add(p []byte) {
	rc.size += int64(len(p))
	if rc.hash != nil {
		rc.hash.Write(p)
	}
}

// addConcurrently is add for a caller with other work to do on p: a piece
// of parallelHashMin bytes or more is hashed on another core meanwhile,
// and the channel returned is closed once it is; p must stay unchanged
// until then. For a smaller piece it returns nil: p was hashed inline.
func (rc *rawContent) addConcurrently(p []byte) <-chan struct{} {
	if rc.hash == nil || len(p) < parallelHashMin {
		rc.add(p)
		return nil
	}
	rc.size += int64(len(p))
	hashed := make(chan struct{})
	go func() {
		rc.hash.Write(p)
		close(hashed)
	}()
	return hashed
}

// finish sets sum from the hash, if there is one.
func (rc *rawContent) finish() {
	if rc.hash != nil {
		rc.hash.Sum(rc.sum[:0])
	}
}
