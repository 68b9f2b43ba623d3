// Package progress draws the progress of long interactive work (a backup, a
// restore, a bootstrap) on a terminal: one bar per phase of bytes, rate and
// time left, from github.com/schollz/progressbar. Off a terminal (a pipe, a
// log file, a pod) it draws nothing: the commands log instead.
package progress

import (
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/sys/unix"
)

// Bar shows one phase at a time. A nil *Bar is valid and draws nothing.
type Bar struct {
	w     io.Writer
	label string // what runs, e.g. the backup id
	phase string
	bar   *progressbar.ProgressBar
}

// New returns a Bar drawing on w, or nil when w is not a terminal.
func New(w io.Writer, label string) *Bar {
	if !IsTerminal(w) {
		return nil
	}
	return &Bar{w: w, label: label}
}

// IsTerminal reports whether w is a terminal.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// Bytes shows done of total bytes in phase; a new phase ends the bar of
// the previous one on its own line. A phase with nothing to do (total 0)
// is shown as a message, not as an empty bar.
func (b *Bar) Bytes(phase string, done, total int64) {
	if b == nil {
		return
	}
	if phase != b.phase {
		b.end()
		b.phase = phase
		if total <= 0 {
			return
		}
		b.bar = progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(b.w),
			progressbar.OptionSetDescription(b.describe(phase)),
			progressbar.OptionShowBytes(true),
			progressbar.OptionShowCount(),
			progressbar.OptionSetWidth(30),
			progressbar.OptionThrottle(200*time.Millisecond),
			progressbar.OptionShowElapsedTimeOnFinish(),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionFullWidth(),
			progressbar.OptionOnCompletion(func() { io.WriteString(b.w, "\n") }),
		)
	}
	if b.bar != nil {
		b.bar.Set64(min(done, total))
	}
}

// Message shows a phase that has no byte count ("waiting for the
// checkpoint").
func (b *Bar) Message(phase, text string) {
	if b == nil || phase == b.phase {
		return
	}
	b.end()
	b.phase = phase
	io.WriteString(b.w, b.describe(text)+"\n")
}

// Finish ends the last bar.
func (b *Bar) Finish() {
	if b == nil {
		return
	}
	b.end()
	b.phase = ""
}

// end closes the current bar: full when its phase got to the end, left as
// it stood (and its line ended) when the work stopped short.
func (b *Bar) end() {
	if b.bar != nil && !b.bar.IsFinished() {
		if st := b.bar.State(); st.CurrentNum >= st.Max {
			b.bar.Finish()
		} else {
			b.bar.Exit()
		}
	}
	b.bar = nil
}

func (b *Bar) describe(s string) string {
	if b.label == "" {
		return s
	}
	return b.label + " " + s
}
