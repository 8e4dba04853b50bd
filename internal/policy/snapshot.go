package policy

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/gatevisor/gatevisor/internal/safefile"
)

// Snapshot is one policy as every gate of a VM sees it: the files read
// once (the root and its includes), parsed and compiled once, and
// identified by a digest over every byte read. It is immutable: a change
// of policy is a new Snapshot, handed whole to every consumer, so two
// gates can never enforce two versions of an edited file or include.
type Snapshot struct {
	// Name is the root file as given (for messages).
	Name string
	// Digest is "sha256:" and the hex SHA-256 over each file read, in load
	// order: its canonical name, its length and its bytes.
	Digest string
	// Files are the canonical names of the files read, the root first.
	Files  []string
	Spec   *Spec
	Policy *Policy
}

// NewSnapshot parses the root file src (named name) with its includes
// through resolve, compiles it, and digests what was read. Pure but for
// what resolve does.
func NewSnapshot(name string, src []byte, resolve Resolver) (*Snapshot, error) {
	h := sha256.New()
	files := []string{name}
	digest := func(n string, b []byte) {
		var l [8]byte
		binary.LittleEndian.PutUint64(l[:], uint64(len(n)))
		h.Write(l[:])
		io.WriteString(h, n)
		binary.LittleEndian.PutUint64(l[:], uint64(len(b)))
		h.Write(l[:])
		h.Write(b)
	}
	digest(name, src)
	var rec Resolver
	if resolve != nil {
		rec = func(from, inc string) (string, []byte, error) {
			canon, b, err := resolve(from, inc)
			if err == nil {
				files = append(files, canon)
				digest(canon, b)
			}
			return canon, b, err
		}
	}
	spec, err := Load(name, src, rec)
	if err != nil {
		return nil, err
	}
	pol, err := Compile(spec)
	if err != nil {
		return nil, err
	}
	return &Snapshot{Name: name, Digest: "sha256:" + hex.EncodeToString(h.Sum(nil)), Files: files, Spec: spec, Policy: pol}, nil
}

// LoadFile reads the policy file at path and its includes (relative to
// its directory, which they may not leave) and returns their snapshot. A
// path that is not a regular file (a FIFO, a device) is refused before it
// is read, and a file larger than MaxFileSize is an error.
func LoadFile(path string) (*Snapshot, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	src, err := readPolicyFile(abs)
	if err != nil {
		return nil, err
	}
	dir, base := filepath.Split(abs)
	return NewSnapshot(base, src, FSResolver(os.DirFS(dir)))
}

func readPolicyFile(path string) ([]byte, error) {
	if err := safefile.CheckRegular(path); err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read policy %s: %w", path, err)
	}
	if len(b) > MaxFileSize {
		return nil, errAt(ErrLimit, Pos{File: filepath.Base(path), Line: 1, Col: 1}, "policy file too large", "", fmt.Sprintf("a policy file is limited to %d bytes", MaxFileSize))
	}
	return b, nil
}
