package status

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// DefaultSidecarAddr is where the sidecar serves /status unless told
// otherwise.
const DefaultSidecarAddr = "127.0.0.1:9898"

// fetchTimeout bounds asking the sidecar: it answers from memory, so a
// slow answer means it is not there.
const fetchTimeout = 3 * time.Second

// Fetch asks the sidecar at addr ("host:port", or an http(s) URL; /status
// is added when the URL has no path) for its Report. The sidecar's report
// is returned with Sidecar.Reachable true and Sidecar.Address addr.
// Errors say which URL failed and how.
func Fetch(ctx context.Context, addr string) (Report, error) {
	u := statusURL(addr)
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return Report{}, fmt.Errorf("status: sidecar address %q: %w", addr, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return Report{}, fmt.Errorf("status: ask the sidecar: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return Report{}, fmt.Errorf("status: ask the sidecar: GET %s: %s: %s", u, resp.Status, oneLine(string(body)))
	}
	var r Report
	if err := json.NewDecoder(io.LimitReader(resp.Body, 8<<20)).Decode(&r); err != nil {
		return Report{}, fmt.Errorf("status: GET %s: not a status report: %w", u, err)
	}
	if r.Version != Version {
		return Report{}, fmt.Errorf("status: GET %s: report version %d, this walferry reads version %d: use the sidecar's walferry version", u, r.Version, Version)
	}
	if r.Slots == nil {
		r.Slots = []Slot{}
	}
	if r.Problems == nil {
		r.Problems = []Problem{}
	}
	r.Sidecar.Reachable, r.Sidecar.Address, r.Sidecar.Error = true, addr, ""
	return r, nil
}

// CheckSidecarAddr checks a sidecar address (host:port or an http(s) URL)
// before it is asked; the error names the address and the fix.
func CheckSidecarAddr(addr string) error {
	u, err := url.Parse(statusURL(addr))
	if err == nil && u.Host == "" {
		err = errors.New("no host")
	}
	if err == nil && u.Port() != "" {
		if _, perr := strconv.ParseUint(u.Port(), 10, 16); perr != nil {
			err = fmt.Errorf("port %q is not a number up to 65535", u.Port())
		}
	}
	if err != nil {
		return fmt.Errorf("sidecar address %.80q: %w; want HOST:PORT or a URL, e.g. 127.0.0.1:9898 or http://walferry-0:9898", addr, err)
	}
	return nil
}

func statusURL(addr string) string {
	if !strings.HasPrefix(addr, "http://") && !strings.HasPrefix(addr, "https://") {
		return "http://" + addr + "/status"
	}
	rest := addr[strings.Index(addr, "://")+3:]
	if !strings.Contains(rest, "/") {
		return addr + "/status"
	}
	return addr
}
