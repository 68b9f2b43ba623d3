package pg

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"sort"
	"strings"

	"github.com/walferry/walferry/internal/failure"
)

// standbyKeywords are the libpq keywords a standby's primary_conninfo keeps,
// in the order StandbyConnInfo writes them, each with the environment
// variable libpq reads it from. The walreceiver runs in the PostgreSQL
// server, whose environment is not walferry's: what walferry was told
// through PGHOST, PGPORT, ... must be written into primary_conninfo or the
// standby would connect somewhere else.
var standbyKeywords = []struct{ key, env string }{
	{"host", "PGHOST"},
	{"hostaddr", "PGHOSTADDR"},
	{"port", "PGPORT"},
	{"user", "PGUSER"},
	{"passfile", "PGPASSFILE"},
	{"sslmode", "PGSSLMODE"},
	{"sslrootcert", "PGSSLROOTCERT"},
	{"sslcert", "PGSSLCERT"},
	{"sslkey", "PGSSLKEY"},
	{"sslcrl", "PGSSLCRL"},
	{"sslcrldir", "PGSSLCRLDIR"},
	{"sslsni", "PGSSLSNI"},
	{"ssl_min_protocol_version", "PGSSLMINPROTOCOLVERSION"},
	{"ssl_max_protocol_version", "PGSSLMAXPROTOCOLVERSION"},
	{"channel_binding", "PGCHANNELBINDING"},
	{"gssencmode", "PGGSSENCMODE"},
	{"krbsrvname", "PGKRBSRVNAME"},
	{"requirepeer", "PGREQUIREPEER"},
	{"connect_timeout", "PGCONNECT_TIMEOUT"},
	{"tcp_user_timeout", ""},
	{"keepalives", ""},
	{"keepalives_idle", ""},
	{"keepalives_interval", ""},
	{"keepalives_count", ""},
	{"target_session_attrs", "PGTARGETSESSIONATTRS"},
	{"options", "PGOPTIONS"},
}

// droppedKeywords are libpq keywords that mean nothing, or the wrong thing,
// on a walreceiver's connection: replication ignores the database, and
// walferry sets the replication mode and the application name itself.
var droppedKeywords = map[string]bool{
	"dbname": true, "replication": true, "application_name": true,
	"fallback_application_name": true, "client_encoding": true,
}

// secretKeywords may not be written into primary_conninfo: postgresql.conf
// and walferry.conf are readable by anyone who can read the configuration
// (and pg_settings shows primary_conninfo to privileged users).
var secretKeywords = map[string]bool{"password": true, "sslpassword": true}

// StandbyConnInfo turns a user's libpq connection string (keyword=value
// pairs or a postgres:// URI) into the primary_conninfo value a standby
// gets: the connection keywords are kept (host, hostaddr, port, user, TLS
// files by path, passfile, timeouts, keepalives, target_session_attrs), the
// ones libpq reads from PG* variables and the string leaves out are filled
// in from walferry's environment (the server will not see it), dbname is
// dropped (replication ignores it), and application_name is set when
// applicationName is not empty. The result is in keyword=value form with
// the keywords in a fixed order, so the same input writes the same line.
//
// A password in the string is refused with a usage error: it would be
// stored in clear in the configuration; the fix is a passfile.
func StandbyConnInfo(connString, applicationName string) (string, error) {
	params, err := parseConnString(connString)
	if err != nil {
		return "", err
	}
	for k := range params {
		if secretKeywords[k] {
			return "", failure.New(failure.Usage, fmt.Sprintf(
				"pg: the source connection string has an inline %s, which primary_conninfo would keep in clear in the configuration; "+
					"put it in a passfile (passfile=/path or PGPASSFILE), e.g. a mounted Secret", k))
		}
	}
	known := make(map[string]bool, len(standbyKeywords))
	for _, kw := range standbyKeywords {
		known[kw.key] = true
	}
	var unknown []string
	for k := range params {
		if !known[k] && !droppedKeywords[k] {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return "", failure.New(failure.Usage, fmt.Sprintf(
			"pg: the source connection string has keywords libpq does not know: %s; fix the connection string (see libpq's \"Parameter Key Words\")",
			strings.Join(unknown, ", ")))
	}
	var b strings.Builder
	add := func(k, v string) {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(quoteConnValue(v))
	}
	for _, kw := range standbyKeywords {
		v, ok := params[kw.key]
		if !ok && kw.env != "" {
			v, ok = os.LookupEnv(kw.env)
			ok = ok && v != ""
		}
		if ok {
			add(kw.key, v)
		}
	}
	if applicationName != "" {
		add("application_name", applicationName)
	}
	return b.String(), nil
}

// ConnHostPort names the server a connection string points at for
// messages: "db.example.com:5432", "[::1]:5433", "/run/postgresql:5432"
// for a socket directory; the first host when several are given. Settings
// the string leaves out come from PGHOST/PGPORT, then libpq's defaults.
// A string that does not parse is named as "(invalid connection string)".
func ConnHostPort(connString string) string {
	params, err := parseConnString(connString)
	if err != nil {
		return "(invalid connection string)"
	}
	get := func(key, env, def string) string {
		v := params[key]
		if v == "" {
			v = os.Getenv(env)
		}
		if v == "" {
			v = def
		}
		v, _, _ = strings.Cut(v, ",")
		return v
	}
	host := get("host", "PGHOST", "")
	if host == "" {
		host = get("hostaddr", "PGHOSTADDR", "/var/run/postgresql")
	}
	port := get("port", "PGPORT", "5432")
	if strings.HasPrefix(host, "/") {
		return host + ":" + port
	}
	return net.JoinHostPort(host, port)
}

// parseConnString parses libpq's two forms into keyword -> value. Only the
// syntax is checked; libpq itself checks the values when it connects.
func parseConnString(s string) (map[string]string, error) {
	if strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://") {
		return parseConnURI(s)
	}
	return parseConnKeywords(s)
}

// parseConnKeywords parses "key=value key2='quoted \' value'".
func parseConnKeywords(s string) (map[string]string, error) {
	params := map[string]string{}
	invalid := func(why string) error {
		return failure.New(failure.Usage, "pg: invalid connection string: "+why+"; write keyword=value pairs separated by spaces, quoting values with spaces in single quotes")
	}
	i := 0
	skipSpace := func() {
		for i < len(s) && isConnSpace(s[i]) {
			i++
		}
	}
	for {
		skipSpace()
		if i >= len(s) {
			return params, nil
		}
		start := i
		for i < len(s) && s[i] != '=' && !isConnSpace(s[i]) {
			i++
		}
		key := s[start:i]
		skipSpace()
		if i >= len(s) || s[i] != '=' {
			return nil, invalid(fmt.Sprintf("%q is not followed by \"=\"", key))
		}
		i++
		skipSpace()
		var v strings.Builder
		if i < len(s) && s[i] == '\'' {
			i++
			closed := false
			for i < len(s) {
				c := s[i]
				if c == '\\' && i+1 < len(s) {
					v.WriteByte(s[i+1])
					i += 2
					continue
				}
				i++
				if c == '\'' {
					closed = true
					break
				}
				v.WriteByte(c)
			}
			if !closed {
				return nil, invalid("unterminated quoted value of " + key)
			}
		} else {
			for i < len(s) && !isConnSpace(s[i]) {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				v.WriteByte(s[i])
				i++
			}
		}
		params[key] = v.String()
	}
}

func isConnSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}

// parseConnURI parses postgres://user:password@host:port,host2/dbname?k=v.
// net/url cannot parse several hosts, so the authority is split by hand.
func parseConnURI(s string) (map[string]string, error) {
	invalid := func(why string) error {
		return failure.New(failure.Usage, "pg: invalid connection URI: "+why+"; write postgres://user@host:port/dbname?param=value")
	}
	params := map[string]string{}
	rest := s[strings.Index(s, "://")+3:]
	if i := strings.IndexByte(rest, '#'); i >= 0 {
		rest = rest[:i]
	}
	var query string
	if i := strings.IndexByte(rest, '?'); i >= 0 {
		rest, query = rest[:i], rest[i+1:]
	}
	authority, path, _ := strings.Cut(rest, "/")
	if at := strings.LastIndexByte(authority, '@'); at >= 0 {
		userinfo := authority[:at]
		authority = authority[at+1:]
		user, password, hasPassword := strings.Cut(userinfo, ":")
		u, err := url.PathUnescape(user)
		if err != nil {
			return nil, invalid("bad escape in the user name")
		}
		if u != "" {
			params["user"] = u
		}
		if hasPassword {
			// Kept only so that StandbyConnInfo refuses it; never printed.
			params["password"] = password
		}
	}
	if authority != "" {
		var hosts, ports []string
		for _, hp := range strings.Split(authority, ",") {
			host, port := hp, ""
			if strings.HasPrefix(hp, "[") {
				end := strings.IndexByte(hp, ']')
				if end < 0 {
					return nil, invalid("unterminated [ in host " + hp)
				}
				host = hp[1:end]
				if p, ok := strings.CutPrefix(hp[end+1:], ":"); ok {
					port = p
				}
			} else if h, p, ok := strings.Cut(hp, ":"); ok {
				host, port = h, p
			}
			h, err := url.PathUnescape(host)
			if err != nil {
				return nil, invalid("bad escape in host " + host)
			}
			hosts = append(hosts, h)
			ports = append(ports, port)
		}
		if strings.Join(hosts, "") != "" {
			params["host"] = strings.Join(hosts, ",")
		}
		if strings.Join(ports, "") != "" {
			params["port"] = strings.Join(ports, ",")
		}
	}
	if path != "" {
		db, err := url.PathUnescape(path)
		if err != nil {
			return nil, invalid("bad escape in the database name")
		}
		params["dbname"] = db
	}
	if query != "" {
		for _, kv := range strings.Split(query, "&") {
			if kv == "" {
				continue
			}
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return nil, invalid(fmt.Sprintf("parameter %q has no value", k))
			}
			key, err1 := url.QueryUnescape(k)
			val, err2 := url.QueryUnescape(v)
			if err1 != nil || err2 != nil {
				return nil, invalid(fmt.Sprintf("bad escape in parameter %q", k))
			}
			if key == "ssl" && val == "true" { // libpq's JDBC-compatible spelling
				key, val = "sslmode", "require"
			}
			params[key] = val
		}
	}
	return params, nil
}

// quoteConnValue quotes a value for a keyword=value connection string when
// it needs it: empty, or holding a space, a quote or a backslash.
func quoteConnValue(v string) string {
	if v != "" && !strings.ContainsAny(v, " \t\n\r\f\v'\\") {
		return v
	}
	r := strings.NewReplacer(`\`, `\\`, `'`, `\'`)
	return "'" + r.Replace(v) + "'"
}

// OverrideHostPort returns connString aimed at host:port instead, in
// keyword=value form with every other setting kept (user, TLS files,
// passfile, ...): a cascading standby follows its site's standby leader
// with the credentials it would use for the source (--follow).
func OverrideHostPort(connString, host, port string) (string, error) {
	params, err := parseConnString(connString)
	if err != nil {
		return "", err
	}
	delete(params, "hostaddr")
	params["host"], params["port"] = host, port
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + quoteConnValue(params[k])
	}
	return strings.Join(parts, " "), nil
}
