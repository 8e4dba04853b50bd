package kit

import (
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/gatevisor/gatevisor/internal/kit/initramfs"
	"github.com/gatevisor/gatevisor/internal/safefile"
)

// FileSpec is a host file to place into a guest's initramfs.
type FileSpec struct {
	Host  string      // path on the host: a regular file or a directory (copied recursively)
	Guest string      // absolute path in the guest
	Mode  os.FileMode // permission bits; 0 means the host file's own
}

// Limits for AppendFiles.
const (
	maxAddFiles = 10000
	maxAddBytes = 1 << 30
)

// ParseFileSpec parses "HOST:GUEST" as given to --add. The split is at the
// last ':' that starts an absolute guest path, so host paths may contain ':'.
// It does not touch the file system; AppendFiles reports missing files.
func ParseFileSpec(s string) (FileSpec, error) {
	i := strings.LastIndex(s, ":/")
	if i < 0 {
		if strings.Contains(s, ":") {
			return FileSpec{}, fmt.Errorf("kit: --add %q: the guest path must be absolute, e.g. %s:/opt/%s", s, s[:strings.LastIndex(s, ":")], filepath.Base(s[:strings.LastIndex(s, ":")]))
		}
		return FileSpec{}, fmt.Errorf("kit: --add %q: want HOST:GUEST, e.g. ./app:/usr/bin/app", s)
	}
	host, guest := s[:i], s[i+1:]
	if host == "" {
		return FileSpec{}, fmt.Errorf("kit: --add %q: empty host path", s)
	}
	if strings.ContainsRune(guest, 0) || strings.ContainsRune(host, 0) {
		return FileSpec{}, fmt.Errorf("kit: --add %q: NUL in path", s)
	}
	for _, part := range strings.Split(guest, "/") {
		if part == ".." {
			return FileSpec{}, fmt.Errorf("kit: --add %q: guest path must not contain \"..\"", s)
		}
	}
	clean := path.Clean(guest)
	if clean == "/" {
		return FileSpec{}, fmt.Errorf("kit: --add %q: the guest path cannot be /", s)
	}
	if len(clean) > initramfs.MaxName {
		return FileSpec{}, fmt.Errorf("kit: --add %q: guest path too long", s)
	}
	return FileSpec{Host: host, Guest: clean}, nil
}

// String returns the spec in HOST:GUEST form.
func (s FileSpec) String() string { return s.Host + ":" + s.Guest }

// AppendFiles writes to out the base initramfs followed by a newc archive
// holding adds (with their parent directories). The kernel unpacks
// concatenated archives in order, so added files override the base's; this
// works for any initramfs, compressed or not, including a user's own. out is
// written atomically: a temporary file, complete before it is renamed into
// place, so out may be a hard link to baseInitrd.
func AppendFiles(baseInitrd string, adds []FileSpec, out string) error {
	// A FIFO would block the open, a device such as /dev/zero never ends.
	if err := safefile.CheckRegular(baseInitrd); err != nil {
		return fmt.Errorf("kit: add files: base initrd: %w", err)
	}
	base, err := os.Open(baseInitrd)
	if err != nil {
		return fmt.Errorf("kit: add files: base initrd: %w", err)
	}
	defer base.Close()
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp-")
	if err != nil {
		return fmt.Errorf("kit: add files: %w", err)
	}
	defer os.Remove(tmp.Name())
	n, err := io.Copy(tmp, base)
	if err != nil {
		tmp.Close()
		return fmt.Errorf("kit: add files: copy base initrd: %w", err)
	}
	// The kernel looks for the next archive at a 4-byte boundary and skips
	// zero padding between archives.
	if pad := (4 - n%4) % 4; pad > 0 {
		if _, err := tmp.Write(make([]byte, pad)); err != nil {
			tmp.Close()
			return fmt.Errorf("kit: add files: %w", err)
		}
	}
	if err := writeAdds(tmp, adds); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("kit: add files: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("kit: add files: %w", err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return fmt.Errorf("kit: add files: %w", err)
	}
	return nil
}

// Well-known directories keep their usual modes when an added file's
// parents are written (the kernel applies the mode of every entry).
var knownDirModes = map[string]uint32{"tmp": 0o1777, "root": 0o700, "proc": 0o555, "sys": 0o555}

func writeAdds(w io.Writer, adds []FileSpec) error {
	cw := initramfs.NewWriter(w)
	count, total := 0, int64(0)
	mkdirs := func(dir string) error {
		var chain []string
		for d := dir; d != "." && d != "/" && !cw.Has(d); d = path.Dir(d) {
			chain = append(chain, d)
		}
		for i := len(chain) - 1; i >= 0; i-- {
			mode, ok := knownDirModes[chain[i]]
			if !ok {
				mode = 0o755
			}
			if err := cw.Dir(chain[i], mode); err != nil {
				return err
			}
		}
		return nil
	}
	var addOne func(spec FileSpec, host, guest string) error
	addOne = func(spec FileSpec, host, guest string) error {
		count++
		if count > maxAddFiles {
			return fmt.Errorf("kit: add %s: more than %d files", spec, maxAddFiles)
		}
		st, err := os.Lstat(host)
		if err != nil {
			return fmt.Errorf("kit: add %s: %w", spec, err)
		}
		name := strings.TrimPrefix(guest, "/")
		if err := mkdirs(path.Dir(name)); err != nil {
			return fmt.Errorf("kit: add %s: %w", spec, err)
		}
		perm := uint32(st.Mode().Perm())
		if st.Mode()&os.ModeSetuid != 0 {
			perm |= 0o4000
		}
		if st.Mode()&os.ModeSetgid != 0 {
			perm |= 0o2000
		}
		if st.Mode()&os.ModeSticky != 0 {
			perm |= 0o1000
		}
		if spec.Mode != 0 && host == spec.Host {
			perm = uint32(spec.Mode.Perm())
		}
		switch {
		case st.Mode().IsRegular():
			total += st.Size()
			if total > maxAddBytes {
				return fmt.Errorf("kit: add %s: more than %d bytes in total", spec, maxAddBytes)
			}
			return addRegular(cw, spec, host, name, perm, st.Size())
		case st.Mode()&os.ModeSymlink != 0:
			if host == spec.Host {
				// The named file itself: follow it.
				real, err := os.Stat(host)
				if err != nil {
					return fmt.Errorf("kit: add %s: %w", spec, err)
				}
				if real.Mode().IsRegular() {
					total += real.Size()
					return addRegular(cw, spec, host, name, uint32(real.Mode().Perm()), real.Size())
				}
				if !real.IsDir() {
					return fmt.Errorf("kit: add %s: not a regular file or directory", spec)
				}
				return addDir(cw, spec, host, name, uint32(real.Mode().Perm()), addOne, guest)
			}
			target, err := os.Readlink(host)
			if err != nil {
				return fmt.Errorf("kit: add %s: %w", spec, err)
			}
			if err := cw.Symlink(name, target); err != nil {
				return fmt.Errorf("kit: add %s: %w", spec, err)
			}
			return nil
		case st.IsDir():
			return addDir(cw, spec, host, name, perm, addOne, guest)
		default:
			return fmt.Errorf("kit: add %s: %s is not a regular file, directory or symlink", spec, host)
		}
	}
	for _, a := range adds {
		if a.Guest == "" || !strings.HasPrefix(a.Guest, "/") {
			return fmt.Errorf("kit: add %s: guest path must be absolute", a)
		}
		if err := addOne(a, a.Host, path.Clean(a.Guest)); err != nil {
			return err
		}
	}
	if err := cw.Close(); err != nil {
		return fmt.Errorf("kit: add files: %w", err)
	}
	return nil
}

// addRegular copies the regular file host into cw. host was a regular file
// when its caller looked; it is opened without blocking and checked again,
// so that one swapped for a FIFO or a device in between is refused instead
// of blocking the build or never ending.
func addRegular(cw *initramfs.Writer, spec FileSpec, host, name string, perm uint32, size int64) error {
	f, err := os.OpenFile(host, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("kit: add %s: %w", spec, err)
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil {
		return fmt.Errorf("kit: add %s: %w", spec, err)
	} else if !st.Mode().IsRegular() {
		return fmt.Errorf("kit: add %s: %s is no longer a regular file", spec, host)
	}
	if err := cw.WriteHeader(initramfs.Header{Name: name, Mode: initramfs.TypeReg | perm, Size: size}); err != nil {
		return fmt.Errorf("kit: add %s: %w", spec, err)
	}
	n, err := io.Copy(cw, io.LimitReader(f, size))
	if err != nil {
		return fmt.Errorf("kit: add %s: %w", spec, err)
	}
	if n != size {
		return fmt.Errorf("kit: add %s: %s changed size while being read", spec, host)
	}
	return nil
}

func addDir(cw *initramfs.Writer, spec FileSpec, host, name string, perm uint32,
	addOne func(FileSpec, string, string) error, guest string) error {
	if !cw.Has(name) {
		if err := cw.Dir(name, perm); err != nil {
			return fmt.Errorf("kit: add %s: %w", spec, err)
		}
	}
	entries, err := os.ReadDir(host)
	if err != nil {
		return fmt.Errorf("kit: add %s: %w", spec, err)
	}
	for _, e := range entries {
		if err := addOne(spec, filepath.Join(host, e.Name()), path.Join(guest, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// SetExtraFiles makes the cached kit's initrd (the default kit's, or the
// named kit opts asks for, as Ensure) its base initramfs plus adds (none
// restores the plain kit) and records them in the manifest. It builds the
// kit first if needed.
func SetExtraFiles(ctx context.Context, opts Options, adds []FileSpec) (*Kit, error) {
	dir, err := opts.cacheDir()
	if err != nil {
		return nil, err
	}
	opts.Force = false
	k, err := Ensure(ctx, opts)
	if err != nil {
		return nil, err
	}
	if len(adds) == 0 && len(k.Manifest.ExtraFiles) == 0 {
		return k, nil
	}
	unlock, err := lockFile(ctx, filepath.Join(dir, "kit.lock"), &opts)
	if err != nil {
		return nil, err
	}
	defer unlock()
	k, err = Load(k.Dir)
	if err != nil {
		return nil, err
	}
	m := k.Manifest
	base := filepath.Join(k.Dir, m.InitrdBase.Name)
	out := filepath.Join(k.Dir, "initrd")
	if len(adds) == 0 {
		tmp := out + ".tmp"
		os.Remove(tmp)
		if err := os.Link(base, tmp); err != nil {
			return nil, fmt.Errorf("kit: restore initrd: %w", err)
		}
		if err := os.Rename(tmp, out); err != nil {
			return nil, fmt.Errorf("kit: restore initrd: %w", err)
		}
	} else if err := AppendFiles(base, adds, out); err != nil {
		return nil, err
	}
	m.ExtraFiles = nil
	for _, a := range adds {
		x := ExtraFile{Host: a.Host, Guest: a.Guest}
		if abs, err := filepath.Abs(a.Host); err == nil {
			x.Host = abs
		}
		if sum, _, err := sha256File(a.Host); err == nil {
			x.SHA256 = sum
		}
		m.ExtraFiles = append(m.ExtraFiles, x)
	}
	if m.Initrd, err = sumOf(k.Dir, "initrd"); err != nil {
		return nil, err
	}
	if err := writeManifest(k.Dir, &m); err != nil {
		return nil, err
	}
	return Load(k.Dir)
}
