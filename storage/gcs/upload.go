package gcs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/walferry/walferry/storage/retry"
)

// statusResumeIncomplete is GCS's answer to a chunk that did not finish a
// resumable upload.
const statusResumeIncomplete = 308

// Put streams r into key. Memory is bounded by Config.ChunkSize: an object
// that fits in one chunk goes in one request (uploadType=media), a larger one
// as a resumable upload in chunks, only the last of which commits the
// object. When reading r fails, the upload fails or ctx is cancelled, the
// final request is never sent and the upload session is deleted, so no
// object (and no change to an existing one) becomes visible under key.
func (c *Client) Put(ctx context.Context, key string, r io.Reader) error {
	if err := checkKey("put", key); err != nil {
		return err
	}
	return c.put(ctx, "put", key, false, r)
}

// PutIfAbsent is Put with the precondition that no live object exists under
// key (ifGenerationMatch=0, checked by GCS when the object is committed).
// When one exists, or a concurrent PutIfAbsent wins the race, it returns an
// error matching storage.ErrExist and the existing object is untouched.
//
// The upload is not retried after a lost answer, so a caller seeing an
// error may still have created the object; compare contents to find out.
func (c *Client) PutIfAbsent(ctx context.Context, key string, r io.Reader) error {
	if err := checkKey("put-if-absent", key); err != nil {
		return err
	}
	return c.put(ctx, "put-if-absent", key, true, r)
}

func (c *Client) put(ctx context.Context, op, key string, ifAbsent bool, r io.Reader) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("gcs: %s %s: %w", op, key, err)
	}
	q := url.Values{"name": {c.objectName(key)}, "fields": {"generation"}}
	if ifAbsent {
		q.Set("ifGenerationMatch", "0")
	}
	buf := make([]byte, c.chunkSize)
	n, more, err := fill(r, buf)
	if err != nil {
		return fmt.Errorf("gcs: %s %s: reading the source: %w", op, key, err)
	}
	if more == nil {
		err = c.mediaUpload(ctx, q, buf[:n])
	} else {
		err = c.resumableUpload(ctx, q, r, buf, more)
	}
	if err != nil {
		var se *sourceError
		if errors.As(err, &se) {
			return fmt.Errorf("gcs: %s %s: reading the source: %w", op, key, se.err)
		}
		return c.mapErr(ctx, op, key, err)
	}
	c.bucketOK.Store(true)
	return nil
}

// fill reads r into buf until buf is full or r ends. When buf is full it
// reads one more byte to learn whether r has more: more is that byte, nil
// when r ended.
func fill(r io.Reader, buf []byte) (n int, more []byte, err error) {
	n, err = io.ReadFull(r, buf)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return n, nil, nil
	}
	if err != nil {
		return n, nil, err
	}
	var b [1]byte
	for {
		m, err := r.Read(b[:])
		if m == 1 {
			return n, b[:], nil
		}
		if err == io.EOF {
			return n, nil, nil
		}
		if err != nil {
			return n, nil, err
		}
	}
}

// sourceError is a failure to read the caller's reader.
type sourceError struct{ err error }

func (e *sourceError) Error() string { return e.err.Error() }
func (e *sourceError) Unwrap() error { return e.err }

// sessionError is a failure of a request to an open upload session.
type sessionError struct{ err error }

func (e *sessionError) Error() string { return e.err.Error() }
func (e *sessionError) Unwrap() error { return e.err }

// mediaUpload stores data as the object in one request. It is not repeated
// on failure (the retry decorator above decides).
func (c *Client) mediaUpload(ctx context.Context, q url.Values, data []byte) error {
	q.Set("uploadType", "media")
	u := c.upload + "b/" + url.PathEscape(c.bucketName) + "/o?" + q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(data))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	drain(resp)
	return nil
}

// resumableUpload opens an upload session and sends r in chunks of
// len(buf). buf holds the first chunk; more is the byte after it. Only the
// final chunk, sent once r has ended, commits the object; on any failure
// the session is deleted.
func (c *Client) resumableUpload(ctx context.Context, q url.Values, r io.Reader, buf, more []byte) (err error) {
	session, err := c.startSession(ctx, q)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			c.cancelSession(ctx, session)
		}
	}()
	var start int64
	n := len(buf)
	for {
		if err := c.sendChunk(ctx, session, buf[:n], start, -1); err != nil {
			return &sessionError{err: err}
		}
		start += int64(n)
		buf[0] = more[0]
		m, next, err := fill(r, buf[1:])
		if err != nil {
			return &sourceError{err: err}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		n = m + 1
		if next == nil {
			if err := c.sendChunk(ctx, session, buf[:n], start, start+int64(n)); err != nil {
				return &sessionError{err: err}
			}
			return nil
		}
		more = next
	}
}

// startSession opens a resumable upload session and returns its URI.
func (c *Client) startSession(ctx context.Context, q url.Values) (string, error) {
	q.Set("uploadType", "resumable")
	u := c.upload + "b/" + url.PathEscape(c.bucketName) + "/o?" + q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader("{}"))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json; charset=UTF-8")
	req.Header.Set("X-Upload-Content-Type", "application/octet-stream")
	resp, err := c.send(req)
	if err != nil {
		return "", err
	}
	drain(resp)
	session := resp.Header.Get("Location")
	if session == "" {
		return "", errors.New("starting a resumable upload: no session URI (Location) in the answer")
	}
	return session, nil
}

// cancelSession deletes an abandoned upload session, so that nothing of it
// can ever be committed. It outlives ctx's cancellation, briefly.
func (c *Client) cancelSession(ctx context.Context, session string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, session, nil)
	if err != nil {
		return
	}
	if resp, err := c.send(req, 499); err == nil {
		drain(resp)
	}
}

// sendChunk sends data as the bytes from start of the upload; total is the
// object's size when data is the final chunk, -1 otherwise. Bytes the
// server did not persist are resent, and a transient failure is followed by
// a status query and a resend, within ChunkRetryDeadline.
func (c *Client) sendChunk(ctx context.Context, session string, data []byte, start, total int64) error {
	deadline := time.Now().Add(c.chunkRetry)
	off := 0 // of data, persisted by the server
	for attempt := 1; ; attempt++ {
		persisted, done, err := c.putChunk(ctx, session, data[off:], start+int64(off), total)
		if err == nil {
			if done {
				if total < 0 {
					return errors.New("resumable upload: the server committed the object before its final chunk")
				}
				return nil
			}
			if total >= 0 && persisted >= total {
				return errors.New("resumable upload: the server did not commit the final chunk")
			}
			if persisted >= start+int64(len(data)) {
				return nil
			}
			if persisted < start+int64(off) {
				return fmt.Errorf("resumable upload: the server lost bytes: it has %d, %d were acknowledged", persisted, start+int64(off))
			}
			off = int(persisted - start)
			attempt = 0
			continue
		}
		if !shouldRetry(ctx, err) || time.Now().After(deadline) {
			return err
		}
		if err := retry.Sleep(ctx, callRetry.Backoff(attempt)); err != nil {
			return err
		}
		// Ask how far the upload got before resending.
		persisted, done, qerr := c.putChunk(ctx, session, nil, -1, total)
		switch {
		case qerr != nil:
			if !shouldRetry(ctx, qerr) {
				return qerr
			}
		case done:
			if total < 0 {
				return errors.New("resumable upload: the server committed the object before its final chunk")
			}
			return nil
		case persisted >= start+int64(len(data)):
			return nil
		case persisted >= start+int64(off):
			off = int(persisted - start)
		default:
			return fmt.Errorf("resumable upload: the server lost bytes: it has %d, %d were acknowledged", persisted, start+int64(off))
		}
	}
}

// putChunk sends one PUT to the session: data from start (start < 0 and no
// data: a status query). It returns how many bytes of the upload the server
// has persisted, or done when the object was committed.
func (c *Client) putChunk(ctx context.Context, session string, data []byte, start, total int64) (persisted int64, done bool, err error) {
	size := "*"
	if total >= 0 {
		size = strconv.FormatInt(total, 10)
	}
	var rng string
	if start < 0 || len(data) == 0 {
		rng = "bytes */" + size
	} else {
		rng = fmt.Sprintf("bytes %d-%d/%s", start, start+int64(len(data))-1, size)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, session, bytes.NewReader(data))
	if err != nil {
		return 0, false, err
	}
	req.ContentLength = int64(len(data))
	req.Header.Set("Content-Range", rng)
	resp, err := c.send(req, statusResumeIncomplete)
	if err != nil {
		return 0, false, err
	}
	drain(resp)
	if resp.StatusCode != statusResumeIncomplete {
		return 0, true, nil
	}
	// "Range: bytes=0-N": N+1 bytes persisted; no header: none.
	r := resp.Header.Get("Range")
	if r == "" {
		return 0, false, nil
	}
	_, last, ok := strings.Cut(strings.TrimPrefix(r, "bytes="), "-")
	n, perr := strconv.ParseInt(last, 10, 64)
	if !ok || perr != nil {
		return 0, false, fmt.Errorf("resumable upload: unreadable Range %q in the answer", r)
	}
	return n + 1, false, nil
}
