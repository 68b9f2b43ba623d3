// Package humanize formats numbers for people: the one way walferry
// writes a byte count in messages, tables and status.
package humanize

import "fmt"

// Bytes formats n with binary units: "512 B", "16 MiB", "22.8 MiB".
func Bytes(n int64) string {
	const unit = 1024
	if n < unit && n > -unit {
		return fmt.Sprintf("%d B", n)
	}
	neg := ""
	if n < 0 {
		neg, n = "-", -n
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	v := float64(n) / float64(div)
	if v == float64(int64(v)) {
		return fmt.Sprintf("%s%d %ciB", neg, int64(v), "KMGTPE"[exp])
	}
	return fmt.Sprintf("%s%.1f %ciB", neg, v, "KMGTPE"[exp])
}
