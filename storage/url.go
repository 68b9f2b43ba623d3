package storage

import (
	"fmt"
	"net/url"
	"path"
	"sort"
	"strings"

	"github.com/walferry/walferry/internal/failure"
)

// Location is a parsed repository URL: file:///path, s3://bucket/prefix,
// gs://bucket/prefix or azure://container/prefix, with optional query
// parameters that override the SDK's environment for this one repository.
type Location struct {
	Scheme string     // "file", "s3", "gs" or "azure"
	Bucket string     // bucket or container; empty for file
	Path   string     // key prefix without leading or trailing slash; the absolute directory for file
	Params url.Values // validated per scheme
}

// allowedParams lists the query parameters each scheme understands.
var allowedParams = map[string][]string{
	"file":  nil,
	"s3":    {"endpoint", "region", "path-style"},
	"gs":    {"endpoint"},
	"azure": {"endpoint", "account"},
}

// ParseURL parses and validates a repository URL. Errors name the URL and
// give a correct example, and are usage mistakes (failure.Usage).
func ParseURL(raw string) (Location, error) {
	bad := func(why string) (Location, error) {
		return Location{}, failure.Wrap(failure.Usage, fmt.Errorf("invalid repository URL %q: %s (examples: file:///var/lib/walferry, s3://bucket/prefix, gs://bucket/prefix, azure://container/prefix)", RedactURL(raw), why))
	}
	if strings.TrimSpace(raw) == "" {
		return bad("empty")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return bad(strings.TrimPrefix(err.Error(), "parse "+fmt.Sprintf("%q", raw)+": "))
	}
	scheme := strings.ToLower(u.Scheme)
	allowed, ok := allowedParams[scheme]
	if !ok {
		if u.Scheme == "" {
			return bad("missing scheme")
		}
		return bad("unknown scheme " + u.Scheme + "://")
	}
	if u.User != nil {
		return bad("credentials do not belong in the URL; use the SDK's environment variables (see README)")
	}
	if u.Fragment != "" {
		return bad("unexpected fragment #" + u.Fragment)
	}
	params := u.Query()
	for name := range params {
		if !contains(allowed, name) {
			if len(allowed) == 0 {
				return bad(fmt.Sprintf("%s:// takes no query parameters, got %q", scheme, name))
			}
			return bad(fmt.Sprintf("unknown parameter %q for %s:// (valid: %s)", name, scheme, strings.Join(allowed, ", ")))
		}
		if len(params[name]) != 1 {
			return bad(fmt.Sprintf("parameter %q given more than once", name))
		}
	}
	if v := params.Get("path-style"); v != "" && v != "true" && v != "false" {
		return bad(fmt.Sprintf("path-style must be true or false, got %q", v))
	}
	if v := params.Get("endpoint"); v != "" {
		e, err := url.Parse(v)
		if err != nil || (e.Scheme != "http" && e.Scheme != "https") || e.Host == "" {
			return bad(fmt.Sprintf("endpoint must be an http:// or https:// URL, got %q", RedactURL(v)))
		}
		if e.User != nil {
			return bad("credentials do not belong in the endpoint; use the SDK's environment variables (see README)")
		}
	}

	loc := Location{Scheme: scheme, Params: params}
	if scheme == "file" {
		if u.Host != "" && u.Host != "localhost" {
			return bad("file URLs need an absolute path: file:///path (three slashes)")
		}
		if u.Path == "" || !strings.HasPrefix(u.Path, "/") {
			return bad("file URLs need an absolute path: file:///path")
		}
		loc.Path = path.Clean(u.Path)
		return loc, nil
	}
	if u.Host == "" {
		return bad("missing bucket name after " + scheme + "://")
	}
	if u.Opaque != "" {
		return bad("expected " + scheme + "://bucket/prefix")
	}
	loc.Bucket = u.Host
	prefix := strings.Trim(u.Path, "/")
	if prefix != "" {
		for _, elem := range strings.Split(prefix, "/") {
			if elem == "" || elem == "." || elem == ".." {
				return bad("prefix must not contain empty, . or .. elements")
			}
		}
	}
	loc.Path = prefix
	return loc, nil
}

// RedactURL returns a URL fit for messages and logs, the one place that
// decides what of a URL is shown: credentials (user:password@) and the
// values of query parameters walferry does not know (a pasted SAS token's
// sig=, say) print as REDACTED; a URL that does not parse is not shown.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL, not shown)"
	}
	if u.User != nil {
		u.User = url.User(redacted)
	}
	if u.RawQuery != "" {
		q := u.Query()
		for name := range q {
			if !knownParam(name) {
				q[name] = []string{redacted}
			}
		}
		u.RawQuery = q.Encode()
	}
	return u.String()
}

const redacted = "REDACTED"

// knownParam reports a query parameter some scheme understands: its value
// configures walferry and is no secret.
func knownParam(name string) bool {
	for _, names := range allowedParams {
		if contains(names, name) {
			return true
		}
	}
	return false
}

// String formats the location back as a URL, parameters sorted.
func (l Location) String() string {
	var b strings.Builder
	b.WriteString(l.Scheme)
	b.WriteString("://")
	if l.Scheme == "file" {
		b.WriteString(l.Path)
	} else {
		b.WriteString(l.Bucket)
		if l.Path != "" {
			b.WriteString("/")
			b.WriteString(l.Path)
		}
	}
	if len(l.Params) > 0 {
		keys := make([]string, 0, len(l.Params))
		for k := range l.Params {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		q := url.Values{}
		for _, k := range keys {
			q[k] = l.Params[k]
		}
		b.WriteString("?")
		b.WriteString(q.Encode())
	}
	return b.String()
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
