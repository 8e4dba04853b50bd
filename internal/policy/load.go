package policy

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
)

// Resolver returns the text of the policy file that `include name` in file
// from refers to, with a canonical name used for cycle detection and in
// error positions.
type Resolver func(from, name string) (canonical string, src []byte, err error)

// FSResolver resolves includes relative to the including file inside fsys
// (for example os.DirFS of the root policy's directory). Includes may not
// leave fsys: absolute names and ".." that climbs out are rejected by fs.FS.
func FSResolver(fsys fs.FS) Resolver {
	return func(from, name string) (string, []byte, error) {
		p := path.Clean(path.Join(path.Dir(from), name))
		if !fs.ValidPath(p) {
			return "", nil, fmt.Errorf("%q is outside the policy directory", name)
		}
		// A FIFO would block the open until a writer comes, a device such
		// as /dev/zero would be read to the limit.
		if fi, err := fs.Stat(fsys, p); err != nil {
			return "", nil, err
		} else if !fi.Mode().IsRegular() {
			return "", nil, fmt.Errorf("%s is not a regular file (%s): give a policy file", p, fi.Mode().Type())
		}
		f, err := fsys.Open(p)
		if err != nil {
			return "", nil, err
		}
		defer f.Close()
		b := make([]byte, MaxFileSize+1)
		n := 0
		for n < len(b) {
			m, err := f.Read(b[n:])
			n += m
			if err != nil {
				if errors.Is(err, io.EOF) {
					break
				}
				return "", nil, err
			}
		}
		return p, b[:n], nil
	}
}

// MapResolver resolves includes from files, keyed by their path relative
// to the root policy's directory (as FSResolver would find them there): a
// policy sent with its includes, read from no disk.
func MapResolver(files map[string]string) Resolver {
	return func(from, name string) (string, []byte, error) {
		p := path.Clean(path.Join(path.Dir(from), name))
		if !fs.ValidPath(p) {
			return "", nil, fmt.Errorf("%q is outside the policy directory", name)
		}
		src, ok := files[p]
		if !ok {
			return "", nil, fmt.Errorf("%s: not among the files sent with the policy: %w", p, fs.ErrNotExist)
		}
		if len(src) > MaxFileSize {
			return "", nil, fmt.Errorf("%s: larger than %d bytes", p, MaxFileSize)
		}
		return p, []byte(src), nil
	}
}

// RecordingResolver wraps resolve and records every file it returns, by
// its canonical name: what MapResolver needs to resolve the same includes
// elsewhere.
func RecordingResolver(resolve Resolver, files map[string]string) Resolver {
	return func(from, name string) (string, []byte, error) {
		p, src, err := resolve(from, name)
		if err == nil {
			files[p] = string(src)
		}
		return p, src, err
	}
}

// Load parses the root file src (named name) and every file it includes,
// transitively, through resolve, and merges them into one Spec in include
// order (an included file's statements come where its include statement
// is). Include depth, the number of includes and their total size are capped,
// and cycles are errors. With a nil resolve, any include is an error.
func Load(name string, src []byte, resolve Resolver) (*Spec, error) {
	l := &loader{resolve: resolve}
	out := &Spec{Root: name}
	if err := l.load(out, name, src, 0, nil); err != nil {
		return nil, err
	}
	return out, nil
}

type loader struct {
	resolve Resolver
	files   int
	size    int
}

func (l *loader) load(out *Spec, name string, src []byte, depth int, stack []string) error {
	l.size += len(src)
	if l.size > MaxTotalSize {
		return errAt(ErrLimit, Pos{File: name, Line: 1, Col: 1}, "policy and includes too large", "", fmt.Sprintf("the total is limited to %d bytes", MaxTotalSize))
	}
	s, err := Parse(name, src)
	if err != nil {
		return err
	}
	stack = append(stack, name)
	for _, inc := range s.Includes {
		if depth+1 > MaxIncludeDepth {
			return errAt(ErrLimit, inc.Pos, "includes nested too deeply", "", fmt.Sprintf("include depth is limited to %d", MaxIncludeDepth))
		}
		l.files++
		if l.files > MaxIncludes {
			return errAt(ErrLimit, inc.Pos, "too many includes", "", fmt.Sprintf("at most %d includes", MaxIncludes))
		}
		if l.resolve == nil {
			return errAt(ErrInclude, inc.Pos, fmt.Sprintf("cannot include %q", inc.Path), "", "includes need a resolver (policy files read from disk)")
		}
		canon, b, err := l.resolve(name, inc.Path)
		if err != nil {
			return errAt(ErrInclude, inc.Pos, fmt.Sprintf("include %q: %v", inc.Path, err), "", "include paths are relative to the including file")
		}
		for _, f := range stack {
			if f == canon {
				return errAt(ErrInclude, inc.Pos, fmt.Sprintf("include cycle: %q includes itself", canon), "", "remove one of the includes")
			}
		}
		if err := l.load(out, canon, b, depth+1, stack); err != nil {
			return err
		}
	}
	return merge(out, s)
}

func merge(out, s *Spec) error {
	if s.Default != nil {
		if out.Default != nil {
			return errAt(ErrSemantic, s.Default.Pos, "second global default", "", fmt.Sprintf("the first is at %s", out.Default.Pos))
		}
		out.Default = s.Default
	}
	out.Includes = append(out.Includes, s.Includes...)
	out.Types = append(out.Types, s.Types...)
	out.Domains = append(out.Domains, s.Domains...)
	out.Sensitivity = append(out.Sensitivity, s.Sensitivity...)
	out.Categories = append(out.Categories, s.Categories...)
	out.Roles = append(out.Roles, s.Roles...)
	out.Subjects = append(out.Subjects, s.Subjects...)
	out.Objects = append(out.Objects, s.Objects...)
	out.TE = append(out.TE, s.TE...)
	out.Blocks = append(out.Blocks, s.Blocks...)
	out.Flows = append(out.Flows, s.Flows...)
	out.Responses = append(out.Responses, s.Responses...)
	out.Interfaces = append(out.Interfaces, s.Interfaces...)
	out.Uses = append(out.Uses, s.Uses...)
	out.Executes = append(out.Executes, s.Executes...)
	out.Entities = append(out.Entities, s.Entities...)
	out.Calls = append(out.Calls, s.Calls...)
	out.Advisory = append(out.Advisory, s.Advisory...)
	return nil
}
