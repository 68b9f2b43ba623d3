//go:build cgo && !walferry_purego

// Package libzstd streams Zstandard frames through the reference C library,
// libzstd. On WAL segments it compresses about 1.3x and decompresses about
// 1.7x faster than the pure-Go encoder and decoder, with a smaller encoder
// (a 2 MiB window at level 3 instead of 8 MiB), which is what archive-push,
// archive-get, backups and restores spend their CPU on.
//
// The library is the copy of libzstd that github.com/DataDog/zstd compiles
// into the binary (imported for that alone): no system library or -dev
// package is needed, only a C compiler, and `make build` still links a static
// binary. Its Go API offers neither the frame content checksum nor a window
// limit, so this package declares the few functions of libzstd's stable API
// it calls (zstd.h, v1.4.0 on; ZSTD_getCParams from the advanced API) and
// calls them itself.
//
// Without cgo (CGO_ENABLED=0, or the walferry_purego build tag) the package
// is empty and internal/codec uses github.com/klauspost/compress/zstd; both
// write and read the same format.
package libzstd

/*
#include <stddef.h>

typedef struct ZSTD_CCtx_s ZSTD_CCtx;
typedef struct ZSTD_DCtx_s ZSTD_DCtx;
typedef struct { const void* src; size_t size; size_t pos; } ZSTD_inBuffer;
typedef struct { void* dst; size_t size; size_t pos; } ZSTD_outBuffer;
typedef struct {
	unsigned windowLog, chainLog, hashLog, searchLog, minMatch, targetLength;
	int strategy;
} ZSTD_compressionParameters;

ZSTD_CCtx* ZSTD_createCCtx(void);
size_t ZSTD_freeCCtx(ZSTD_CCtx*);
size_t ZSTD_CCtx_setParameter(ZSTD_CCtx*, int, int);
size_t ZSTD_CCtx_reset(ZSTD_CCtx*, int);
size_t ZSTD_compressStream2(ZSTD_CCtx*, ZSTD_outBuffer*, ZSTD_inBuffer*, int);
ZSTD_DCtx* ZSTD_createDCtx(void);
size_t ZSTD_freeDCtx(ZSTD_DCtx*);
size_t ZSTD_DCtx_setParameter(ZSTD_DCtx*, int, int);
size_t ZSTD_DCtx_reset(ZSTD_DCtx*, int);
size_t ZSTD_decompressStream(ZSTD_DCtx*, ZSTD_outBuffer*, ZSTD_inBuffer*);
unsigned ZSTD_isError(size_t);
const char* ZSTD_getErrorName(size_t);
unsigned ZSTD_versionNumber(void);
ZSTD_compressionParameters ZSTD_getCParams(int, unsigned long long, size_t);

// Parameter and directive values of zstd.h (fixed by its stable API).
enum {
	wf_c_compressionLevel = 100,
	wf_c_windowLog = 101,
	wf_c_checksumFlag = 201,
	wf_d_windowLogMax = 100,
	wf_e_continue = 0,
	wf_e_end = 2,
	wf_reset_session_only = 1,
};

// wf_step is one call of ZSTD_compressStream2 or ZSTD_decompressStream
// with the buffers built here, on the C side: Go memory handed to C may
// not hold Go pointers, so the Go side passes the two buffers and their
// positions, and gets the new positions back.
typedef struct { size_t ret, in, out; } wf_step;

static wf_step wf_compress(ZSTD_CCtx* c, void* dst, size_t cap, size_t out,
                           const void* src, size_t n, size_t in, int op) {
	ZSTD_outBuffer o = {dst, cap, out};
	ZSTD_inBuffer i = {src, n, in};
	wf_step s;
	s.ret = ZSTD_compressStream2(c, &o, &i, op);
	s.in = i.pos;
	s.out = o.pos;
	return s;
}

static wf_step wf_decompress(ZSTD_DCtx* d, void* dst, size_t cap,
                             const void* src, size_t n, size_t in) {
	ZSTD_outBuffer o = {dst, cap, 0};
	ZSTD_inBuffer i = {src, n, in};
	wf_step s;
	s.ret = ZSTD_decompressStream(d, &o, &i);
	s.in = i.pos;
	s.out = o.pos;
	return s;
}

static unsigned wf_window_log(int level) {
	return ZSTD_getCParams(level, (unsigned long long)-1, 0).windowLog;
}
*/
import "C"

import (
	"errors"
	"fmt"
	"io"
	"runtime"
	"unsafe"

	_ "github.com/DataDog/zstd" // compiles libzstd 1.5.7 into the binary
)

// MaxWindowLog bounds the window of every frame: encoders never use a
// larger one, decoders refuse frames that ask for more (8 MiB, the limit
// of walferry's pure-Go decoder too), so an object's decoder memory is
// bounded whatever the object says.
const MaxWindowLog = 23

// bufSize is the size of the compressed-side buffer of an Encoder or
// Decoder: libzstd's own recommendation (ZSTD_CStreamOutSize and
// ZSTD_DStreamInSize are both one 128 KiB block plus a little).
const bufSize = 128<<10 + 512

// Version returns the linked libzstd's version, as "1.5.7".
func Version() string {
	v := uint(C.ZSTD_versionNumber())
	return fmt.Sprintf("%d.%d.%d", v/10000, v/100%100, v%100)
}

func zstdError(code C.size_t) error {
	return errors.New("zstd: " + C.GoString(C.ZSTD_getErrorName(code)))
}

func isError(code C.size_t) bool { return C.ZSTD_isError(code) != 0 }

// Encoder writes one Zstandard frame per stream, with its content checksum
// (XXH64 of the raw bytes, which a Decoder verifies). Reset starts a new
// stream; Close ends it. An Encoder is not safe for concurrent use; its C
// memory is freed when it becomes unreachable.
type Encoder struct {
	cctx *C.ZSTD_CCtx
	w    io.Writer
	out  []byte
	err  error
}

// NewEncoder returns an Encoder compressing at level (1..22; the window is
// capped at 2^MaxWindowLog bytes for the levels that would use more).
func NewEncoder(level int) (*Encoder, error) {
	cctx := C.ZSTD_createCCtx()
	if cctx == nil {
		return nil, errors.New("zstd: cannot allocate a compression context")
	}
	e := &Encoder{cctx: cctx, out: make([]byte, bufSize)}
	runtime.AddCleanup(e, func(c *C.ZSTD_CCtx) { C.ZSTD_freeCCtx(c) }, cctx)
	set := func(param, value C.int) error {
		if code := C.ZSTD_CCtx_setParameter(cctx, param, value); isError(code) {
			return fmt.Errorf("zstd: setting parameter %d to %d: %w", param, value, zstdError(code))
		}
		return nil
	}
	if err := set(C.wf_c_compressionLevel, C.int(level)); err != nil {
		return nil, err
	}
	if err := set(C.wf_c_checksumFlag, 1); err != nil {
		return nil, err
	}
	if C.wf_window_log(C.int(level)) > MaxWindowLog {
		if err := set(C.wf_c_windowLog, MaxWindowLog); err != nil {
			return nil, err
		}
	}
	return e, nil
}

// Reset discards any stream in progress and starts a new one written to w.
func (e *Encoder) Reset(w io.Writer) {
	C.ZSTD_CCtx_reset(e.cctx, C.wf_reset_session_only)
	e.w, e.err = w, nil
}

// Write compresses p; compressed bytes reach the writer as blocks fill.
func (e *Encoder) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	in := 0
	for in < len(p) {
		s := C.wf_compress(e.cctx, unsafe.Pointer(&e.out[0]), C.size_t(len(e.out)), 0,
			unsafe.Pointer(&p[0]), C.size_t(len(p)), C.size_t(in), C.wf_e_continue)
		if isError(s.ret) {
			e.err = zstdError(s.ret)
			return in, e.err
		}
		in = int(s.in)
		if err := e.emit(int(s.out)); err != nil {
			return in, err
		}
	}
	return len(p), nil
}

// Close ends the frame (its last block and checksum) and writes it out.
// It does not close the underlying writer.
func (e *Encoder) Close() error {
	if e.err != nil {
		return e.err
	}
	var none byte // a valid pointer for an empty input
	for {
		s := C.wf_compress(e.cctx, unsafe.Pointer(&e.out[0]), C.size_t(len(e.out)), 0,
			unsafe.Pointer(&none), 0, 0, C.wf_e_end)
		if isError(s.ret) {
			e.err = zstdError(s.ret)
			return e.err
		}
		if err := e.emit(int(s.out)); err != nil {
			return err
		}
		if s.ret == 0 { // frame complete and flushed
			e.err = errors.New("zstd: write after Close")
			return nil
		}
	}
}

func (e *Encoder) emit(n int) error {
	if n == 0 {
		return nil
	}
	if _, err := e.w.Write(e.out[:n]); err != nil {
		e.err = err
		return err
	}
	return nil
}

// ErrTruncated reports a stream that ended inside a frame.
var ErrTruncated = errors.New("zstd: stream ends inside a frame")

// Decoder reads the raw content of a stream of Zstandard frames, verifying
// each frame's content checksum when it has one, and refusing windows above
// 2^MaxWindowLog bytes. An empty stream is an error: walferry's writers
// always write a frame. A Decoder is not safe for concurrent use; its C
// memory is freed when it becomes unreachable.
type Decoder struct {
	dctx    *C.ZSTD_DCtx
	r       io.Reader
	in      []byte
	pos, n  int  // unconsumed input is in[pos:n]
	inFrame bool // a frame has started and not ended
	seen    bool // at least one byte of input arrived
	eof     bool // r reported io.EOF
	err     error
}

// NewDecoder returns a Decoder; Reset gives it its input.
func NewDecoder() (*Decoder, error) {
	dctx := C.ZSTD_createDCtx()
	if dctx == nil {
		return nil, errors.New("zstd: cannot allocate a decompression context")
	}
	d := &Decoder{dctx: dctx, in: make([]byte, bufSize)}
	runtime.AddCleanup(d, func(c *C.ZSTD_DCtx) { C.ZSTD_freeDCtx(c) }, dctx)
	if code := C.ZSTD_DCtx_setParameter(dctx, C.wf_d_windowLogMax, MaxWindowLog); isError(code) {
		return nil, fmt.Errorf("zstd: setting the window limit: %w", zstdError(code))
	}
	return d, nil
}

// Reset discards any stream in progress and starts reading r.
func (d *Decoder) Reset(r io.Reader) {
	C.ZSTD_DCtx_reset(d.dctx, C.wf_reset_session_only)
	d.r, d.pos, d.n, d.inFrame, d.seen, d.eof, d.err = r, 0, 0, false, false, false, nil
}

// Read decompresses into p. It returns io.EOF only at the end of the input
// after a complete frame; a stream cut inside a frame is ErrTruncated.
func (d *Decoder) Read(p []byte) (int, error) {
	if d.err != nil {
		return 0, d.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if d.pos == d.n && !d.eof {
			if err := d.fill(); err != nil {
				d.err = err
				return 0, err
			}
		}
		if d.pos == d.n && d.eof {
			switch {
			case !d.seen:
				d.err = ErrTruncated
			case d.inFrame:
				// The decoder may still hold decoded bytes of a complete
				// frame: let it flush them before judging.
				n, err := d.step(p)
				if n > 0 || err != nil {
					return n, err
				}
				if d.inFrame {
					d.err = ErrTruncated
				} else {
					d.err = io.EOF
				}
			default:
				d.err = io.EOF
			}
			return 0, d.err
		}
		n, err := d.step(p)
		if n > 0 || err != nil {
			return n, err
		}
	}
}

// step runs the decompressor once on the buffered input.
func (d *Decoder) step(p []byte) (int, error) {
	var none byte // a valid pointer for an empty input
	src := unsafe.Pointer(&none)
	if d.n > 0 {
		src = unsafe.Pointer(&d.in[0])
	}
	s := C.wf_decompress(d.dctx, unsafe.Pointer(&p[0]), C.size_t(len(p)), src, C.size_t(d.n), C.size_t(d.pos))
	if isError(s.ret) {
		d.err = zstdError(s.ret)
		return 0, d.err
	}
	d.pos = int(s.in)
	// ret 0: a frame ended and everything it decoded is in p; otherwise the
	// frame goes on (or the decoder holds output p had no room for).
	d.inFrame = s.ret != 0
	return int(s.out), nil
}

// fill reads more compressed input into the buffer.
func (d *Decoder) fill() error {
	d.pos, d.n = 0, 0
	for d.n == 0 {
		n, err := d.r.Read(d.in)
		d.n = n
		if n > 0 {
			d.seen = true
		}
		if err == io.EOF {
			d.eof = true
			return nil
		}
		if err != nil {
			return err
		}
	}
	return nil
}
