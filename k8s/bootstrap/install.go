package bootstrap

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/walferry/walferry/internal/atomicfile"
	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/pg/replication"
)

// Names of the binaries InstallBin gets.
const (
	WalferryName = "walferry"
	HookName     = "walferry-hook"
)

// install copies walferry and walferry-hook, which lives next to it, into
// InstallBin (the volume the postgres container runs the hooks from):
// each under a temporary name then renamed, mode 0755, so a postgres
// container that runs a hook meanwhile sees the old binary or the new
// one, never half of one.
func (b *bootstrapper) install() error {
	exe := b.o.Executable
	if err := os.MkdirAll(b.o.InstallBin, 0o755); err != nil {
		return failure.Wrap(failure.Usage, fmt.Errorf("bootstrap: --install-bin: %w", err))
	}
	for _, name := range []string{WalferryName, HookName} {
		src := exe
		if name == HookName {
			src = filepath.Join(filepath.Dir(exe), HookName)
		}
		dst := filepath.Join(b.o.InstallBin, name)
		if err := copyExecutable(src, dst); err != nil {
			return failure.Wrap(failure.Usage, fmt.Errorf(
				"bootstrap: install %s into %s: %w (walferry-hook must be next to walferry, as make install and the image put it)", name, b.o.InstallBin, err))
		}
		b.res.Installed = append(b.res.Installed, dst)
	}
	b.log.Info("installed the binaries", "dir", b.o.InstallBin)
	return nil
}

func copyExecutable(src, dst string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := atomicfile.WriteFile(dst, f, 0o755, atomicfile.Durable); err != nil {
		return err
	}
	// WriteFile's mode is filtered by the umask; hooks must run for anyone.
	return os.Chmod(dst, 0o755)
}

// countingSink counts what a BASE_BACKUP copy wrote, for the report.
type countingSink struct {
	replication.Sink
	start, stop pg.LSN
	bytes       int64
	files       int
}

func (s *countingSink) Begin(ctx context.Context, st replication.Start) error {
	s.start = st.LSN
	return s.Sink.Begin(ctx, st)
}

func (s *countingSink) File(ctx context.Context, e replication.Entry, r io.Reader) error {
	s.files++
	s.bytes += e.Size
	return s.Sink.File(ctx, e, r)
}

func (s *countingSink) End(ctx context.Context, st replication.Stop) error {
	s.stop = st.LSN
	return s.Sink.End(ctx, st)
}
