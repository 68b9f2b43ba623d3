package gcs

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/walferry/walferry/storage"
)

// reader streams an object (or a range of it). When the connection fails
// mid-stream it reopens the object from the next unread byte, pinned to the
// generation first read, at most MaxAttempts-1 times in all; errors it
// gives up on are classified like those of the other calls.
//
// It keeps the context of the Get that created it: the body it streams is
// bound to that context anyway.
type reader struct {
	c         *Client
	ctx       context.Context
	op, key   string
	name      string
	gen       string // object generation, pinned after the first answer
	pos       int64  // offset of the next byte to read
	remaining int64  // bytes still wanted; < 0: to the end
	body      io.ReadCloser
	resumes   int
	crc       *crcCheck // nil unless the whole object is read
}

// open requests the object from r.pos. It reports empty when the range
// starts at or past the end of the object (GCS answers 416 for those).
func (r *reader) open() (empty bool, err error) {
	q := url.Values{"alt": {"media"}}
	if r.gen != "" {
		q.Set("ifGenerationMatch", r.gen)
	}
	hdr := http.Header{}
	ranged := r.pos > 0 || r.remaining >= 0
	switch {
	case r.remaining >= 0:
		hdr.Set("Range", fmt.Sprintf("bytes=%d-%d", r.pos, r.pos+r.remaining-1))
	case r.pos > 0:
		hdr.Set("Range", fmt.Sprintf("bytes=%d-", r.pos))
	}
	resp, err := r.c.call(r.ctx, http.MethodGet, r.c.objectURL(r.name, "", q), hdr, http.StatusRequestedRangeNotSatisfiable)
	if err != nil {
		return false, err
	}
	if resp.StatusCode == http.StatusRequestedRangeNotSatisfiable {
		drain(resp)
		return true, nil
	}
	if r.gen == "" {
		r.gen = resp.Header.Get("X-Goog-Generation")
	}
	body := resp.Body
	if ranged && resp.StatusCode == http.StatusOK {
		// The server ignored the range: skip to it and cut it.
		if _, err := io.CopyN(io.Discard, body, r.pos); err != nil {
			body.Close()
			if errors.Is(err, io.EOF) {
				return true, nil
			}
			return false, err
		}
	}
	if r.remaining >= 0 {
		body = struct {
			io.Reader
			io.Closer
		}{io.LimitReader(body, r.remaining), body}
	}
	if r.crc != nil && r.resumes == 0 {
		r.crc.want, r.crc.ok = parseCRC32C(resp.Header.Values("X-Goog-Hash"))
	}
	r.body = body
	return false, nil
}

func (r *reader) Read(p []byte) (int, error) {
	if r.body == nil {
		return 0, io.EOF
	}
	n, err := r.body.Read(p)
	r.pos += int64(n)
	if r.remaining >= 0 {
		r.remaining -= int64(n)
	}
	if r.crc != nil {
		r.crc.h.Write(p[:n])
	}
	switch {
	case err == io.EOF:
		if r.crc != nil && r.crc.ok && r.crc.h.Sum32() != r.crc.want {
			return n, storage.Retryable(fmt.Errorf("gcs: %s %s: CRC32C mismatch: got %08x, GCS has %08x", r.op, r.key, r.crc.h.Sum32(), r.crc.want))
		}
		return n, io.EOF
	case err != nil && r.resumes+1 < r.c.maxAttempts && r.ctx.Err() == nil && isNetError(err):
		r.body.Close()
		r.body = nil
		r.resumes++
		empty, oerr := r.open()
		var ae *apiError
		if errors.As(oerr, &ae) && ae.Code == http.StatusPreconditionFailed {
			return n, fmt.Errorf("gcs: %s %s: the object was replaced while being read (%w) after: %w", r.op, r.key, oerr, err)
		}
		if oerr != nil {
			return n, r.c.mapErr(r.ctx, r.op, r.key, oerr)
		}
		if empty {
			return n, io.EOF
		}
		return n, nil
	case err != nil:
		return n, r.c.classify(r.op, r.key, err)
	}
	return n, nil
}

func (r *reader) Close() error {
	if r.body == nil {
		return nil
	}
	err := r.body.Close()
	r.body = nil
	return err
}

// crcCheck accumulates the CRC32C of a whole-object read.
type crcCheck struct {
	h    hash.Hash32
	want uint32
	ok   bool // GCS sent a CRC32C
}

func newCRCCheck() *crcCheck {
	return &crcCheck{h: crc32.New(crc32.MakeTable(crc32.Castagnoli))}
}

// parseCRC32C finds "crc32c=<base64 of 4 big-endian bytes>" in X-Goog-Hash
// values ("crc32c=n03x6A==,md5=...").
func parseCRC32C(values []string) (uint32, bool) {
	for _, v := range values {
		for _, part := range strings.Split(v, ",") {
			b64, ok := strings.CutPrefix(strings.TrimSpace(part), "crc32c=")
			if !ok {
				continue
			}
			b, err := base64.StdEncoding.DecodeString(b64)
			if err != nil || len(b) != 4 {
				return 0, false
			}
			return binary.BigEndian.Uint32(b), true
		}
	}
	return 0, false
}
