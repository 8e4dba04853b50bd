package deb

import (
	"archive/tar"
	"bytes"
	"io"
	"testing"
)

// fuzzLimits keep each fuzz iteration small.
var fuzzLimits = Limits{MaxMembers: 8, MaxEntries: 64, MaxEntrySize: 1 << 20, MaxTotal: 4 << 20, MaxXZDict: 1 << 20}

// FuzzWalk feeds arbitrary bytes to the package reader: it must return an
// error or succeed, never panic, and never hand out more than the limits.
// Seeds are in testdata/fuzz/FuzzWalk (packages with every compression).
func FuzzWalk(f *testing.F) {
	for _, comp := range []string{"", ".gz", ".xz", ".zst"} {
		f.Add(makeDeb(f, comp, testData))
	}
	f.Fuzz(func(t *testing.T, pkg []byte) {
		entries := 0
		var total int64
		for _, m := range []Member{ControlMember, DataMember} {
			_ = Walk(bytes.NewReader(pkg), fuzzLimits, m, func(h *tar.Header, name string, r io.Reader) error {
				entries++
				n, err := io.Copy(io.Discard, r)
				total += n
				if n > fuzzLimits.MaxEntrySize {
					t.Fatalf("entry %q gave %d bytes", name, n)
				}
				return err
			})
		}
		if entries > 2*fuzzLimits.MaxEntries || total > 2*fuzzLimits.MaxTotal {
			t.Fatalf("%d entries, %d bytes: limits not enforced", entries, total)
		}
		if c, err := ReadControl(bytes.NewReader(pkg), fuzzLimits); err == nil {
			_, _ = ParseRelations(c["Depends"])
		}
	})
}

// FuzzParseControl checks the control-file and relation parsers.
func FuzzParseControl(f *testing.F) {
	f.Add([]byte(testControl))
	f.Add([]byte("Package: a\nDepends: b (>= 1) | c:any, d [amd64]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseControl(data)
		if err != nil {
			return
		}
		if len(c) > MaxControlFields {
			t.Fatalf("%d fields", len(c))
		}
		for _, v := range c {
			rels, err := ParseRelations(v)
			if err != nil {
				continue
			}
			for _, r := range rels {
				for _, d := range r {
					if d.Name == "" || (d.Op == "") != (d.Version == "") {
						t.Fatalf("bad dependency %+v from %q", d, v)
					}
				}
			}
		}
	})
}
