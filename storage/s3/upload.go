package s3

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"golang.org/x/sync/errgroup"
)

// Put stores everything read from r under key, replacing any existing
// object. Up to PartSize bytes go up as one PutObject; more as a multipart
// upload whose parts are sent in parallel. The object becomes visible only
// once complete: on any error, including a read error from r or the
// cancellation of ctx, the multipart upload is aborted and no partial object
// is left. r is read sequentially and never seeked; errors reading it are
// returned wrapped and are never retryable. An error matching
// storage.IsRetryable means the Put may succeed if repeated with a fresh
// reader (each request has already been tried MaxAttempts times).
//
// A Put holds Client part buffers while it runs; all Puts of one Client
// share Concurrency buffers, so r must not wait for another Put on the same
// Client to make progress.
func (c *Client) Put(ctx context.Context, key string, r io.Reader) error {
	return c.put(ctx, "put", key, r, false)
}

// PutIfAbsent is Put, but only creates the object when key is free: it sends
// If-None-Match: * with PutObject or with CompleteMultipartUpload. When the
// key exists, or another writer wins a concurrent race, it returns an error
// matching storage.ErrExist and the existing object is left intact. A store
// that rejects conditional writes yields an error matching
// errors.ErrUnsupported.
func (c *Client) PutIfAbsent(ctx context.Context, key string, r io.Reader) error {
	return c.put(ctx, "put-if-absent", key, r, true)
}

func (c *Client) put(ctx context.Context, op, key string, r io.Reader, ifAbsent bool) error {
	full, err := c.objectKey(key)
	if err != nil {
		return fmt.Errorf("s3: %s %s: %w", op, key, err)
	}
	buf, err := c.getBuf(ctx)
	if err != nil {
		return fmt.Errorf("s3: %s %s: %w", op, key, err)
	}
	n, err := io.ReadFull(r, buf)
	if err == nil {
		// The buffer is full: peek one byte to learn whether the object
		// fits in one part after all.
		var peek [1]byte
		var m int
		m, err = io.ReadFull(r, peek[:])
		switch {
		case m == 1:
			// More data: multipart, with the peeked byte leading part 2.
			return c.multipart(ctx, op, key, full, buf, io.MultiReader(bytes.NewReader(peek[:]), r), ifAbsent)
		case err == io.EOF:
			err = io.ErrUnexpectedEOF // exactly one part: single PutObject
		}
	}
	if err != io.EOF && err != io.ErrUnexpectedEOF {
		c.putBuf(buf)
		return fmt.Errorf("s3: %s %s: read source: %w", op, key, err)
	}
	defer c.putBuf(buf)
	in := &s3.PutObjectInput{
		Bucket:        &c.bucket,
		Key:           &full,
		Body:          bytes.NewReader(buf[:n]),
		ContentLength: aws.Int64(int64(n)),
	}
	if ifAbsent {
		in.IfNoneMatch = aws.String("*")
	}
	if _, err := c.api.PutObject(ctx, in); err != nil {
		return c.wrap(ctx, op, key, err)
	}
	c.bucketSeen.Store(true)
	return nil
}

// multipart uploads first (a full part) and then the rest of r as a
// multipart upload to full. It owns first and returns it to the pool.
func (c *Client) multipart(ctx context.Context, op, key, full string, first []byte, r io.Reader, ifAbsent bool) (err error) {
	created, err := c.api.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &c.bucket, Key: &full})
	if err != nil {
		c.putBuf(first)
		return c.wrap(ctx, op, key, err)
	}
	c.bucketSeen.Store(true)
	uploadID := aws.ToString(created.UploadId)
	defer func() {
		if err != nil {
			err = c.abort(ctx, full, uploadID, err)
		}
	}()

	uctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(uctx)

	var (
		mu       sync.Mutex
		parts    []types.CompletedPart
		uploaded int64 // bytes the server acknowledged
		total    int64 // bytes read from r
		loopErr  error
	)
	buf, n, last := first, len(first), false
	var nparts int
	for partNum := int32(1); ; partNum++ {
		if partNum > MaxParts {
			c.putBuf(buf)
			loopErr = fmt.Errorf("object exceeds %d parts of %d bytes: raise the part size", MaxParts, c.partSize)
			break
		}
		b, size, num := buf, n, partNum
		total += int64(size)
		nparts++
		g.Go(func() error {
			defer c.putBuf(b)
			out, err := c.api.UploadPart(gctx, &s3.UploadPartInput{
				Bucket:        &c.bucket,
				Key:           &full,
				UploadId:      &uploadID,
				PartNumber:    aws.Int32(num),
				Body:          bytes.NewReader(b[:size]),
				ContentLength: aws.Int64(int64(size)),
			})
			if err != nil {
				return fmt.Errorf("part %d: %w", num, err)
			}
			mu.Lock()
			parts = append(parts, types.CompletedPart{ETag: out.ETag, PartNumber: aws.Int32(num)})
			uploaded += int64(size)
			mu.Unlock()
			return nil
		})
		if last {
			break
		}
		// Wait for a free buffer; fails fast once a part failed or ctx ended.
		buf, err = c.getBuf(gctx)
		if err != nil {
			break // g.Wait or ctx.Err reports why
		}
		n, err = io.ReadFull(r, buf)
		if err == io.EOF {
			c.putBuf(buf)
			break
		}
		if err == io.ErrUnexpectedEOF {
			last = true
		} else if err != nil {
			c.putBuf(buf)
			loopErr = fmt.Errorf("read source: %w", err)
			break
		}
	}
	if loopErr != nil {
		cancel()
	}
	werr := g.Wait()
	switch {
	case loopErr != nil:
		return fmt.Errorf("s3: %s %s: %w", op, key, loopErr)
	case ctx.Err() != nil:
		return fmt.Errorf("s3: %s %s: %w", op, key, ctx.Err())
	case werr != nil:
		return c.wrap(ctx, op, key, werr)
	}
	if uploaded != total || len(parts) != nparts {
		return fmt.Errorf("s3: %s %s: uploaded %d bytes in %d parts but read %d bytes in %d parts", op, key, uploaded, len(parts), total, nparts)
	}
	slices.SortFunc(parts, func(a, b types.CompletedPart) int { return int(*a.PartNumber - *b.PartNumber) })

	in := &s3.CompleteMultipartUploadInput{
		Bucket:          &c.bucket,
		Key:             &full,
		UploadId:        &uploadID,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
		// AWS S3 refuses to complete with another size; MinIO ignores it.
		MpuObjectSize: aws.Int64(total),
	}
	if ifAbsent {
		in.IfNoneMatch = aws.String("*")
	}
	if _, err := c.api.CompleteMultipartUpload(ctx, in); err != nil {
		return c.wrap(ctx, op, key, err)
	}
	return nil
}

// abort aborts a multipart upload after cause, on a fresh context so that a
// cancelled ctx still cleans up, and returns cause (noting a failed abort).
func (c *Client) abort(ctx context.Context, full, uploadID string, cause error) error {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
	defer cancel()
	_, err := c.api.AbortMultipartUpload(actx, &s3.AbortMultipartUploadInput{
		Bucket: &c.bucket, Key: &full, UploadId: &uploadID,
	})
	if err != nil && errorCode(err) != "NoSuchUpload" {
		return fmt.Errorf("%w (abort of multipart upload %s also failed, its parts stay until a lifecycle rule removes them: %v)", cause, uploadID, err)
	}
	return cause
}

// getBuf waits for a free part buffer, or for ctx to end.
func (c *Client) getBuf(ctx context.Context) ([]byte, error) {
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if err := ctx.Err(); err != nil {
		<-c.sem
		return nil, err
	}
	select {
	case b := <-c.free:
		return b, nil
	default:
		return make([]byte, c.partSize), nil
	}
}

// putBuf returns a buffer taken with getBuf.
func (c *Client) putBuf(b []byte) {
	c.free <- b[:cap(b)] // never blocks: one slot per token
	<-c.sem
}

// Copy copies srcKey to dstKey server-side, replacing dstKey atomically. A
// missing srcKey matches storage.ErrNotExist. Objects over 5 GiB, which one
// CopyObject cannot copy, are copied part by part (UploadPartCopy) pinned to
// the source's ETag.
func (c *Client) Copy(ctx context.Context, srcKey, dstKey string) error {
	src, err := c.objectKey(srcKey)
	if err != nil {
		return fmt.Errorf("s3: copy %s: %w", srcKey, err)
	}
	dst, err := c.objectKey(dstKey)
	if err != nil {
		return fmt.Errorf("s3: copy to %s: %w", dstKey, err)
	}
	_, err = c.api.CopyObject(ctx, &s3.CopyObjectInput{
		Bucket:     &c.bucket,
		Key:        &dst,
		CopySource: aws.String(c.copySource(src)),
	})
	if err == nil {
		c.bucketSeen.Store(true)
		return nil
	}
	if code := errorCode(err); code == "InvalidRequest" || code == "EntityTooLarge" {
		head, herr := c.api.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &c.bucket, Key: &src})
		if herr == nil && aws.ToInt64(head.ContentLength) > maxCopyObjectSize {
			return c.copyMultipart(ctx, srcKey, dstKey, aws.ToInt64(head.ContentLength), aws.ToString(head.ETag))
		}
	}
	return c.wrap(ctx, "copy", srcKey+" to "+dstKey, err)
}

// copyMultipart copies size bytes of srcKey (at etag) to dstKey in parts of
// copyPartSize, Concurrency at a time, aborting on any error.
func (c *Client) copyMultipart(ctx context.Context, srcKey, dstKey string, size int64, etag string) (err error) {
	src, dst := c.prefix+srcKey, c.prefix+dstKey
	op, key := "copy", srcKey+" to "+dstKey
	partSize := max(c.copyPartSize, (size+MaxParts-1)/MaxParts)
	created, err := c.api.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &c.bucket, Key: &dst})
	if err != nil {
		return c.wrap(ctx, op, key, err)
	}
	uploadID := aws.ToString(created.UploadId)
	defer func() {
		if err != nil {
			err = c.abort(ctx, dst, uploadID, err)
		}
	}()
	nparts := (size + partSize - 1) / partSize
	parts := make([]types.CompletedPart, nparts)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(cap(c.sem))
	for i := range nparts {
		first := i * partSize
		last := min(first+partSize, size) - 1
		g.Go(func() error {
			out, err := c.api.UploadPartCopy(gctx, &s3.UploadPartCopyInput{
				Bucket:            &c.bucket,
				Key:               &dst,
				UploadId:          &uploadID,
				PartNumber:        aws.Int32(int32(i + 1)),
				CopySource:        aws.String(c.copySource(src)),
				CopySourceRange:   aws.String(fmt.Sprintf("bytes=%d-%d", first, last)),
				CopySourceIfMatch: aws.String(etag),
			})
			if err != nil {
				return fmt.Errorf("part %d: %w", i+1, err)
			}
			parts[i] = types.CompletedPart{ETag: out.CopyPartResult.ETag, PartNumber: aws.Int32(int32(i + 1))}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("s3: %s %s: %w", op, key, ctx.Err())
		}
		return c.wrap(ctx, op, key, err)
	}
	_, err = c.api.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
		Bucket:          &c.bucket,
		Key:             &dst,
		UploadId:        &uploadID,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
	})
	if err != nil {
		return c.wrap(ctx, op, key, err)
	}
	return nil
}

// copySource returns the URL-encoded "bucket/key" CopySource value.
func (c *Client) copySource(full string) string {
	segs := strings.Split(full, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return c.bucket + "/" + strings.Join(segs, "/")
}
