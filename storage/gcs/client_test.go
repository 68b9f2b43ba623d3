package gcs

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/oauth2"

	"github.com/walferry/walferry/storage"
	"github.com/walferry/walferry/storage/storagetest"
)

// fakeGCS is the part of the JSON API the upload and download paths use,
// with faults to inject. Tests that need the whole API use fake-gcs-server.
type fakeGCS struct {
	t  *testing.T
	mu sync.Mutex

	objects  map[string][]byte
	sessions map[string]*bytes.Buffer // upload ID -> persisted bytes
	names    map[string]string        // upload ID -> object name
	deleted  []string                 // deleted upload IDs
	requests []string                 // "METHOD path Content-Range/Range"
	auth     []string                 // Authorization headers seen

	// Faults.
	failPut     map[int]int // n-th chunk PUT (1-based) -> status to answer without persisting
	halfPut     map[int]bool
	cutGet      int64 // the first GET's body stops after this many bytes (0: never)
	badCRC      bool
	putsSeen    int
	getsSeen    int
	generation  string
	sessionBase string
}

func newFakeGCS(t *testing.T) (*fakeGCS, *Client) {
	f := &fakeGCS{t: t, objects: map[string][]byte{}, sessions: map[string]*bytes.Buffer{}, names: map[string]string{},
		failPut: map[int]int{}, halfPut: map[int]bool{}, generation: "42"}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	f.sessionBase = srv.URL + "/session/"
	c, err := New(t.Context(), Config{Bucket: "b", Endpoint: srv.URL, ChunkSize: 512 << 10, MaxAttempts: 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return f, c
}

func (f *fakeGCS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, fmt.Sprintf("%s %s %s%s", r.Method, r.URL.Path, r.Header.Get("Content-Range"), r.Header.Get("Range")))
	f.auth = append(f.auth, r.Header.Get("Authorization"))
	body, _ := io.ReadAll(r.Body)
	q := r.URL.Query()
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/upload/storage/v1/b/b/o" && q.Get("uploadType") == "media":
		f.objects[q.Get("name")] = body
		fmt.Fprint(w, `{"generation":"42"}`)
	case r.Method == http.MethodPost && r.URL.Path == "/upload/storage/v1/b/b/o" && q.Get("uploadType") == "resumable":
		id := strconv.Itoa(len(f.sessions) + 1)
		f.sessions[id] = &bytes.Buffer{}
		f.names[id] = q.Get("name")
		w.Header().Set("Location", f.sessionBase+id)
	case r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/session/"):
		f.putChunk(w, strings.TrimPrefix(r.URL.Path, "/session/"), r.Header.Get("Content-Range"), body)
	case r.Method == http.MethodDelete && strings.HasPrefix(r.URL.Path, "/session/"):
		id := strings.TrimPrefix(r.URL.Path, "/session/")
		delete(f.sessions, id)
		f.deleted = append(f.deleted, id)
		w.WriteHeader(499)
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/storage/v1/b/b/o/") && q.Get("alt") == "media":
		f.get(w, r)
	default:
		http.Error(w, `{"error":{"code":404,"message":"not here"}}`, http.StatusNotFound)
	}
}

func (f *fakeGCS) putChunk(w http.ResponseWriter, id, contentRange string, body []byte) {
	buf, ok := f.sessions[id]
	if !ok {
		http.Error(w, `{"error":{"code":404,"message":"no such upload"}}`, http.StatusNotFound)
		return
	}
	var total int64 = -1
	rng, size, _ := strings.Cut(strings.TrimPrefix(contentRange, "bytes "), "/")
	if size != "*" {
		total, _ = strconv.ParseInt(size, 10, 64)
	}
	if rng != "*" { // not a status query
		f.putsSeen++
		if code := f.failPut[f.putsSeen]; code != 0 {
			w.WriteHeader(code)
			return
		}
		first, _, _ := strings.Cut(rng, "-")
		start, _ := strconv.ParseInt(first, 10, 64)
		if start != int64(buf.Len()) {
			f.t.Errorf("chunk starts at %d, %d bytes persisted", start, buf.Len())
			http.Error(w, "bad offset", http.StatusBadRequest)
			return
		}
		if f.halfPut[f.putsSeen] {
			body = body[:len(body)/2]
			total = -1
		}
		buf.Write(body)
	}
	if total >= 0 && int64(buf.Len()) == total {
		f.objects[f.names[id]] = bytes.Clone(buf.Bytes())
		fmt.Fprint(w, `{"generation":"42"}`)
		return
	}
	if buf.Len() > 0 {
		w.Header().Set("Range", fmt.Sprintf("bytes=0-%d", buf.Len()-1))
	}
	w.WriteHeader(statusResumeIncomplete)
}

func (f *fakeGCS) get(w http.ResponseWriter, r *http.Request) {
	f.getsSeen++
	name := strings.TrimPrefix(r.URL.Path, "/storage/v1/b/b/o/")
	data, ok := f.objects[name]
	if !ok {
		http.Error(w, `{"error":{"code":404,"message":"No such object"}}`, http.StatusNotFound)
		return
	}
	if g := r.URL.Query().Get("ifGenerationMatch"); g != "" && g != f.generation {
		http.Error(w, `{"error":{"code":412,"message":"generation"}}`, http.StatusPreconditionFailed)
		return
	}
	w.Header().Set("X-Goog-Generation", f.generation)
	status := http.StatusOK
	if rng := r.Header.Get("Range"); rng != "" {
		first, _, _ := strings.Cut(strings.TrimPrefix(rng, "bytes="), "-")
		start, _ := strconv.ParseInt(first, 10, 64)
		data = data[start:]
		status = http.StatusPartialContent
	} else {
		crc := crc32.Checksum(data, crc32.MakeTable(crc32.Castagnoli))
		if f.badCRC {
			crc++
		}
		w.Header().Set("X-Goog-Hash", "crc32c="+base64.StdEncoding.EncodeToString(binary.BigEndian.AppendUint32(nil, crc))+",md5=xx")
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.WriteHeader(status)
	if f.getsSeen == 1 && f.cutGet > 0 {
		w.Write(data[:f.cutGet])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // drops the connection mid-body
	}
	w.Write(data)
}

func (f *fakeGCS) object(name string) ([]byte, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.objects[name]
	return b, ok
}

func TestResumableChunkResend(t *testing.T) {
	f, c := newFakeGCS(t)
	f.failPut[2] = http.StatusServiceUnavailable // the second chunk fails once
	f.halfPut[3] = true                          // its resend is half persisted
	const size = 3*(512<<10) + 10
	if err := c.Put(t.Context(), "k", storagetest.OnlyReader(storagetest.NewReader(1, size))); err != nil {
		t.Fatalf("Put: %v\nrequests: %q", err, f.requests)
	}
	got, ok := f.object("k")
	if !ok || !bytes.Equal(got, storagetest.Bytes(1, size)) {
		t.Fatalf("stored %d bytes (ok %v), want the %d written\nrequests: %q", len(got), ok, size, f.requests)
	}
	if len(f.deleted) != 0 {
		t.Errorf("a committed session was deleted: %q", f.deleted)
	}
	t.Logf("requests: %q", f.requests)
}

func TestResumableAbortDeletesSession(t *testing.T) {
	f, c := newFakeGCS(t)
	readErr := errors.New("source broke")
	r := &failAfter{r: storagetest.NewReader(2, 3*(512<<10)), err: readErr}
	err := c.Put(t.Context(), "k", r)
	if !errors.Is(err, readErr) || storage.IsRetryable(err) {
		t.Fatalf("Put from a failing reader = %v, want the reader's error, not retryable", err)
	}
	if _, ok := f.object("k"); ok {
		t.Error("an abandoned upload was committed")
	}
	if len(f.deleted) != 1 {
		t.Errorf("deleted sessions %q, want the one session\nrequests: %q", f.deleted, f.requests)
	}
}

func TestResumableSessionGone(t *testing.T) {
	f, c := newFakeGCS(t)
	f.failPut[2] = http.StatusNotFound
	err := c.Put(t.Context(), "k", storagetest.NewReader(3, 3*(512<<10)))
	if !storage.IsRetryable(err) || errors.Is(err, storage.ErrNoBucket) || !strings.Contains(err.Error(), "session") {
		t.Fatalf("Put whose session vanished = %v, want a retryable error about the session", err)
	}
}

type failAfter struct {
	r   io.Reader
	err error
}

func (f *failAfter) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		err = f.err
	}
	return n, err
}

func TestGetResumes(t *testing.T) {
	f, c := newFakeGCS(t)
	const size = 300_000
	f.objects["k"] = storagetest.Bytes(4, size)
	f.cutGet = 100_000
	rc, err := c.Get(t.Context(), "k")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if err := storagetest.Verify(rc, 4, size); err != nil {
		t.Fatalf("Get after a dropped connection: %v\nrequests: %q", err, f.requests)
	}
	if f.getsSeen != 2 {
		t.Errorf("%d GETs, want 2\nrequests: %q", f.getsSeen, f.requests)
	}
	if last := f.requests[len(f.requests)-1]; !strings.HasSuffix(last, "bytes=100000-") {
		t.Errorf("resumed with %q, want a range from byte 100000", last)
	}
}

func TestGetReplacedWhileResuming(t *testing.T) {
	f, c := newFakeGCS(t)
	f.objects["k"] = storagetest.Bytes(4, 300_000)
	f.cutGet = 100_000
	rc, err := c.Get(t.Context(), "k")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	f.mu.Lock()
	f.generation = "43"
	f.mu.Unlock()
	_, err = io.Copy(io.Discard, rc)
	if err == nil || errors.Is(err, storage.ErrExist) || !strings.Contains(err.Error(), "replaced") {
		t.Fatalf("read of an object replaced mid-stream = %v, want an error saying so", err)
	}
}

func TestGetCRCMismatch(t *testing.T) {
	f, c := newFakeGCS(t)
	f.objects["k"] = []byte("hello")
	f.badCRC = true
	rc, err := c.Get(t.Context(), "k")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := io.ReadAll(rc); err == nil || !strings.Contains(err.Error(), "CRC32C") {
		t.Fatalf("read with a wrong CRC32C = %v, want a CRC32C error", err)
	}
	// A ranged read carries no checksum of the whole object.
	rc2, err := c.GetRange(t.Context(), "k", 1, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer rc2.Close()
	if got, err := io.ReadAll(rc2); err != nil || string(got) != "ello" {
		t.Errorf("GetRange = %q, %v; want %q", got, err, "ello")
	}
}

func TestAuthorizationHeader(t *testing.T) {
	f, c := newFakeGCS(t)
	c.tokens = oauth2.StaticTokenSource(&oauth2.Token{AccessToken: "tok", TokenType: "Bearer"})
	if err := c.Put(t.Context(), "k", strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	if len(f.auth) != 1 || f.auth[0] != "Bearer tok" {
		t.Errorf("Authorization headers %q, want one %q", f.auth, "Bearer tok")
	}
}

func TestTokenErrors(t *testing.T) {
	c := &Client{bucketName: "b", endpoint: "https://x", endpointBy: "test"}
	denied := &tokenError{err: &oauth2.RetrieveError{Response: &http.Response{StatusCode: http.StatusBadRequest}, ErrorCode: "invalid_grant"}}
	if err := c.classify("get", "k", denied); !errors.Is(err, storage.ErrPermission) || storage.IsRetryable(err) ||
		!strings.Contains(err.Error(), "GOOGLE_APPLICATION_CREDENTIALS") {
		t.Errorf("classify(token 400) = %v, want ErrPermission naming GOOGLE_APPLICATION_CREDENTIALS", err)
	}
	down := &tokenError{err: &oauth2.RetrieveError{Response: &http.Response{StatusCode: http.StatusBadGateway}}}
	if err := c.classify("get", "k", down); !storage.IsRetryable(err) {
		t.Errorf("classify(token 502) = %v, want retryable", err)
	}
	if shouldRetry(context.Background(), denied) {
		t.Error("shouldRetry(token error) = true, want false (the token source retries itself)")
	}
}

func TestUploadEndpoint(t *testing.T) {
	tests := []struct{ in, want string }{
		{"https://storage.googleapis.com/storage/v1/", "https://storage.googleapis.com/upload/storage/v1/"},
		{"http://127.0.0.1:4443/storage/v1/", "http://127.0.0.1:4443/upload/storage/v1/"},
		{"https://psc.example.com/gcs/storage/v1/", "https://psc.example.com/gcs/upload/storage/v1/"},
		{"https://other.example.com/api/", "https://other.example.com/upload/storage/v1/"},
	}
	for _, tc := range tests {
		if got := uploadEndpoint(tc.in); got != tc.want {
			t.Errorf("uploadEndpoint(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestParseCRC32C(t *testing.T) {
	tests := []struct {
		in   []string
		want uint32
		ok   bool
	}{
		{[]string{"crc32c=mnG7TA==,md5=XUFAKrxLKna5cZ2REBfFkg=="}, 0x9a71bb4c, true},
		{[]string{"md5=XUFAKrxLKna5cZ2REBfFkg==", "crc32c=mnG7TA=="}, 0x9a71bb4c, true},
		{[]string{"md5=XUFAKrxLKna5cZ2REBfFkg=="}, 0, false},
		{[]string{"crc32c=!!"}, 0, false},
		{nil, 0, false},
	}
	for _, tc := range tests {
		got, ok := parseCRC32C(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("parseCRC32C(%q) = %08x, %v; want %08x, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
	if got := crc32.Checksum([]byte("hello"), crc32.MakeTable(crc32.Castagnoli)); got != 0x9a71bb4c {
		t.Errorf("CRC32C(hello) = %08x; the fixture above is wrong", got)
	}
}

func TestObjectInfo(t *testing.T) {
	o := object{Name: "p/k", Size: "17179869184", Updated: "2026-11-22T18:59:21.505554Z"}
	got, err := o.info("k")
	if err != nil || got.Key != "k" || got.Size != 16<<30 || got.ModTime.Nanosecond() != 505554000 {
		t.Errorf("info = %+v, %v", got, err)
	}
	if _, err := (object{Name: "x", Size: "12.5"}).info("x"); err == nil {
		t.Error("a size that is not an integer was accepted")
	}
}
