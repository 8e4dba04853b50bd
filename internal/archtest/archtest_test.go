package archtest

import (
	"errors"
	"fmt"
	"go/ast"
	"go/build"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// Where the allowed-imports table lives.
const (
	designFile     = "docs/design.md"
	parentHeading  = "## Architecture"
	tableHeading   = "### Allowed imports"
	testOnlyMarker = "(test only)"
)

// row is one row of the allowed-imports table. Paths are relative to the
// module ("internal/vmi"); never entries may also be import paths outside the
// module ("net/http/...") and end in "/..." to name a package and everything
// below it.
type row struct {
	line     int // in designFile
	index    int // position in the table: arrows point to higher indices
	pkg      string
	testOnly bool
	may      []string
	never    []string
}

type table struct {
	rows  []*row
	byPkg map[string]*row
	roots map[string]bool // first path elements of the rows: "internal", "cmd", ...
}

// pkg is one package of the module, as its non-test files make it.
type pkg struct {
	rel   string // import path relative to the module
	name  string
	files []*file // non-test files of the package, build-constrained ones included
}

type file struct {
	path    string // relative to the module root, for messages
	imports []string
	doc     *ast.CommentGroup
}

// module is what the tests read: the module path, its packages and the table.
type module struct {
	path  string
	pkgs  map[string]*pkg
	table *table
	// errs are problems found while reading the table; TestImportTable
	// reports them, the other tests only need a table to work with.
	errs []string
}

func (m *module) rel(importPath string) (string, bool) {
	return strings.CutPrefix(importPath, m.path+"/")
}

func load(t *testing.T) *module {
	t.Helper()
	root := moduleRoot(t)
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	mm := regexp.MustCompile(`(?m)^module\s+"?([^"\s]+)"?\s*$`).FindSubmatch(gomod)
	if mm == nil {
		t.Fatalf("%s: no module line", filepath.Join(root, "go.mod"))
	}
	m := &module{path: string(mm[1])}
	m.pkgs = readPackages(t, root)
	design, err := os.ReadFile(filepath.Join(root, designFile))
	if err != nil {
		t.Fatal(err)
	}
	m.table, m.errs = parseTable(string(design))
	return m
}

func (m *module) row(rel string) (*row, bool) {
	if m.table == nil {
		return nil, false
	}
	r, ok := m.table.byPkg[rel]
	return r, ok
}

// needTable stops a test that cannot run without the table.
func (m *module) needTable(t *testing.T) {
	t.Helper()
	if m.table == nil {
		t.Fatalf("%s: %s", designFile, strings.Join(m.errs, "; "))
	}
}

// moduleRoot is the nearest directory above the test's that holds a go.mod.
func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		up := filepath.Dir(dir)
		if up == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = up
	}
}

// readPackages walks the module as the go command does (no testdata, vendor,
// _ or . directories, no nested modules) and reads every package's non-test
// files, including those that build constraints leave out on this machine.
func readPackages(t *testing.T, root string) map[string]*pkg {
	t.Helper()
	pkgs := map[string]*pkg{}
	err := filepath.WalkDir(root, func(dir string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			return nil
		}
		if dir != root {
			n := d.Name()
			if n == "testdata" || n == "vendor" || strings.HasPrefix(n, ".") || strings.HasPrefix(n, "_") {
				return filepath.SkipDir
			}
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				return filepath.SkipDir
			}
		}
		bp, err := build.Default.ImportDir(dir, 0)
		var noGo *build.NoGoError
		if errors.As(err, &noGo) {
			return nil
		}
		if err != nil {
			t.Errorf("%s: %v", dir, err)
			return nil
		}
		rel, err := filepath.Rel(root, dir)
		if err != nil {
			return err
		}
		p := &pkg{rel: filepath.ToSlash(rel), name: bp.Name}
		names := slices.Concat(bp.GoFiles, bp.CgoFiles, bp.IgnoredGoFiles)
		slices.Sort(names)
		for _, n := range names {
			if strings.HasSuffix(n, "_test.go") || !strings.HasSuffix(n, ".go") {
				continue
			}
			fset := token.NewFileSet()
			af, err := parser.ParseFile(fset, filepath.Join(dir, n), nil, parser.ImportsOnly|parser.ParseComments)
			if err != nil {
				t.Errorf("%v", err)
				continue
			}
			if af.Name.Name != p.name {
				continue // a file of another package left out by a build constraint (a //go:build ignore program)
			}
			f := &file{path: path.Join(p.rel, n), doc: af.Doc}
			for _, is := range af.Imports {
				ip, err := strconv.Unquote(is.Path.Value)
				if err != nil {
					t.Errorf("%s: %v", f.path, err)
					continue
				}
				f.imports = append(f.imports, ip)
			}
			p.files = append(p.files, f)
		}
		pkgs[p.rel] = p
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return pkgs
}

var backquoted = regexp.MustCompile("`([^`]*)`")

// parseTable reads the allowed-imports table: the first Markdown table after
// tableHeading, which must sit in the parentHeading section. It returns nil
// only when there is no table to check against.
func parseTable(design string) (*table, []string) {
	lines := strings.Split(design, "\n")
	start, parent := -1, ""
	for i, l := range lines {
		if strings.HasPrefix(l, "## ") {
			parent = strings.TrimSpace(l)
		}
		if strings.TrimSpace(l) == tableHeading {
			if parent != parentHeading {
				return nil, []string{fmt.Sprintf("line %d: %q is under %q, not %q", i+1, tableHeading, parent, parentHeading)}
			}
			start = i + 1
			break
		}
	}
	if start < 0 {
		return nil, []string{fmt.Sprintf("no %q heading under %q", tableHeading, parentHeading)}
	}
	for start < len(lines) && !strings.HasPrefix(lines[start], "|") {
		if strings.HasPrefix(lines[start], "#") {
			return nil, []string{fmt.Sprintf("no table under %q", tableHeading)}
		}
		start++
	}
	var errs []string
	bad := func(line int, format string, args ...any) {
		errs = append(errs, fmt.Sprintf("%s:%d: %s", designFile, line, fmt.Sprintf(format, args...)))
	}
	tb := &table{byPkg: map[string]*row{}, roots: map[string]bool{}}
	for i := start; i < len(lines) && strings.HasPrefix(lines[i], "|"); i++ {
		if i < start+2 {
			continue // the header and the |---| line
		}
		cells := strings.Split(strings.Trim(strings.TrimSpace(lines[i]), "|"), "|")
		if len(cells) != 3 {
			bad(i+1, "a row has three cells: package | may import | never imports")
			continue
		}
		r := &row{line: i + 1, index: len(tb.rows)}
		names, rest := paths(cells[0])
		switch rest {
		case "":
		case testOnlyMarker:
			r.testOnly = true
		default:
			bad(i+1, "unexpected %q in the package cell (only %q may follow the package)", rest, testOnlyMarker)
		}
		if len(names) != 1 {
			bad(i+1, "the package cell names one package in backquotes")
			continue
		}
		r.pkg = names[0]
		var restMay, restNever string
		r.may, restMay = paths(cells[1])
		r.never, restNever = paths(cells[2])
		for _, rest := range []string{restMay, restNever} {
			if strings.Trim(rest, "—-, ") != "" {
				bad(i+1, "%q: every path goes in backquotes, separated by commas; write — for none", rest)
			}
		}
		if prev, ok := tb.byPkg[r.pkg]; ok {
			bad(i+1, "%s has a row already, at line %d", r.pkg, prev.line)
			continue
		}
		tb.rows = append(tb.rows, r)
		tb.byPkg[r.pkg] = r
		tb.roots[strings.SplitN(r.pkg, "/", 2)[0]] = true
	}
	if len(tb.rows) == 0 {
		return nil, append(errs, fmt.Sprintf("the table under %q has no rows", tableHeading))
	}
	return tb, errs
}

// paths returns the backquoted paths of a cell and what is left of it.
func paths(cell string) ([]string, string) {
	var ps []string
	for _, m := range backquoted.FindAllStringSubmatch(cell, -1) {
		ps = append(ps, m[1])
	}
	return ps, strings.TrimSpace(backquoted.ReplaceAllString(cell, ""))
}

// internal reports whether a never entry names packages of the module (it
// starts like a row: "internal/...") rather than an import path outside it.
func (tb *table) internal(entry string) bool {
	return tb.roots[strings.SplitN(entry, "/", 2)[0]]
}

// matches reports whether path p is named by entry, a path or path/... .
func matches(entry, p string) bool {
	if base, ok := strings.CutSuffix(entry, "/..."); ok {
		return p == base || strings.HasPrefix(p, base+"/")
	}
	return p == entry
}

// TestImportTable checks the table on its own: every entry names a row
// below its own (arrows point down only), and no package is both allowed and
// forbidden to import something.
func TestImportTable(t *testing.T) {
	m := load(t)
	m.needTable(t)
	for _, e := range m.errs {
		t.Error(e)
	}
	tb := m.table
	for _, r := range tb.rows {
		seen := map[string]bool{}
		for _, dep := range r.may {
			if seen[dep] {
				t.Errorf("%s:%d: %s's row names %s twice", designFile, r.line, r.pkg, dep)
			}
			seen[dep] = true
			d, ok := tb.byPkg[dep]
			switch {
			case !ok:
				t.Errorf("%s:%d: %s's row allows %s, which has no row of its own: give it one, below %s's", designFile, r.line, r.pkg, dep, r.pkg)
			case d.index <= r.index:
				t.Errorf("%s:%d: %s's row allows %s, whose row (line %d) is not below it: arrows point down only. Move %s's row below %s's if the layering allows it; otherwise the import points up and must go", designFile, r.line, r.pkg, dep, d.line, dep, r.pkg)
			}
			for _, n := range r.never {
				if matches(n, dep) {
					t.Errorf("%s:%d: %s's row both allows %s and says it never imports %s", designFile, r.line, r.pkg, dep, n)
				}
			}
		}
		for _, n := range r.never {
			if !tb.internal(n) {
				continue
			}
			named := false
			for _, o := range tb.rows {
				named = named || matches(n, o.pkg)
			}
			if !named {
				t.Errorf("%s:%d: %s's row says it never imports %s, which names no package of the table", designFile, r.line, r.pkg, n)
			}
		}
	}
}

// TestEveryPackageListed checks that the table and the module have the same
// packages, and that a package that looks like a test helper (named test...,
// ...test or under tests/, or importing testing) is marked test only.
func TestEveryPackageListed(t *testing.T) {
	m := load(t)
	m.needTable(t)
	for _, rel := range sortedKeys(m.pkgs) {
		if _, ok := m.table.byPkg[rel]; !ok {
			t.Errorf("%s is not in the allowed-imports table (%s, %q): add a row for it, below every package that imports it and above every package it imports", rel, designFile, tableHeading)
		}
	}
	for _, r := range m.table.rows {
		if _, ok := m.pkgs[r.pkg]; !ok {
			t.Errorf("%s:%d: %s has a row but there is no such package: remove the row (and its name from other rows)", designFile, r.line, r.pkg)
		}
	}
	for _, rel := range sortedKeys(m.pkgs) {
		r, ok := m.table.byPkg[rel]
		if !ok || r.testOnly {
			continue
		}
		elems := strings.Split(rel, "/")
		last := elems[len(elems)-1]
		if slices.Contains(elems, "tests") || strings.HasPrefix(last, "test") || strings.HasSuffix(last, "test") {
			t.Errorf("%s:%d: %s is named as a test package: mark its row %q so that only _test.go files may import it", designFile, r.line, rel, testOnlyMarker)
			continue
		}
		for _, f := range m.pkgs[rel].files {
			if slices.Contains(f.imports, "testing") {
				t.Errorf("%s:%d: %s imports testing (%s), so it is a test helper: mark its row %q so that only _test.go files may import it", designFile, r.line, rel, f.path, testOnlyMarker)
				break
			}
		}
	}
}

// TestImportsFollowTable checks every package's non-test imports against its
// row, and every row's entries against the real imports.
func TestImportsFollowTable(t *testing.T) {
	m := load(t)
	m.needTable(t)
	tb := m.table
	for _, rel := range sortedKeys(m.pkgs) {
		p := m.pkgs[rel]
		r, ok := tb.byPkg[rel]
		if !ok {
			continue // TestEveryPackageListed says so
		}
		// Each import once, with the first file that makes it.
		var imports []string
		where := map[string]string{}
		for _, f := range p.files {
			for _, ip := range f.imports {
				if _, ok := where[ip]; !ok {
					imports = append(imports, ip)
					where[ip] = f.path
				}
			}
		}
		used := map[string]bool{}
		for _, ip := range imports {
			dep, internal := m.rel(ip)
			shown := ip
			if internal {
				shown = dep
			}
			for _, n := range r.never {
				if tb.internal(n) == internal && matches(n, shown) {
					t.Errorf("%s imports %s (%s), and the design says it never imports %s (%s:%d, %q): remove the import; lifting the rule is a change of the design, not of the table", rel, shown, where[ip], n, designFile, r.line, tableHeading)
				}
			}
			if !internal {
				continue
			}
			used[dep] = true
			if d, ok := tb.byPkg[dep]; ok && d.testOnly {
				t.Errorf("%s imports %s (%s), which is test only: only _test.go files may import it", rel, dep, where[ip])
			}
			if !slices.Contains(r.may, dep) {
				t.Errorf("%s imports %s (%s), which its row in the allowed-imports table (%s:%d) does not allow: if the import is intended, add `%s` to %s's row in %s (%s's row must be below it: arrows point down only); if not, remove the import", rel, dep, where[ip], designFile, r.line, dep, rel, designFile, dep)
			}
		}
		for _, dep := range r.may {
			if !used[dep] {
				t.Errorf("%s:%d: %s's row allows %s, but no non-test file of %s imports it: remove it from the row, so that the table stays the real import graph", designFile, r.line, rel, dep, rel)
			}
		}
	}
}

// unsafeFile is the name a file that imports unsafe must have: *_unsafe.go,
// or *_unsafe_GOOS.go, *_unsafe_GOARCH.go, *_unsafe_GOOS_GOARCH.go.
var unsafeFile = regexp.MustCompile(`_unsafe(_[a-z0-9]+){0,2}\.go$`)

// TestUnsafeOnlyInUnsafeFiles checks that the code that can break memory
// safety is found by its file name.
func TestUnsafeOnlyInUnsafeFiles(t *testing.T) {
	m := load(t)
	for _, rel := range sortedKeys(m.pkgs) {
		for _, f := range m.pkgs[rel].files {
			if slices.Contains(f.imports, "unsafe") && !unsafeFile.MatchString(path.Base(f.path)) {
				t.Errorf("%s imports unsafe: only files named *_unsafe.go may; move what needs it into one", f.path)
			}
		}
	}
}

var (
	importersLine = regexp.MustCompile(`(?i)\bimported\s+(only\s+)?by\b`)
	leafClaim     = regexp.MustCompile(`(?i)\bimports\s+nothing\s+(from|of)\s+gatevisor\b`)
)

// TestPackageComments checks that every package has one package comment,
// that it does not list the package's importers (the table is the one
// record of who imports whom), and that a claim to import nothing from
// gatevisor is true of the table.
func TestPackageComments(t *testing.T) {
	m := load(t)
	for _, rel := range sortedKeys(m.pkgs) {
		p := m.pkgs[rel]
		var docs []*file
		for _, f := range p.files {
			if f.doc != nil {
				docs = append(docs, f)
			}
		}
		switch len(docs) {
		case 0:
			t.Errorf("%s has no package comment: add one that says what the package does, in doc.go or the package's main file", rel)
			continue
		case 1:
		default:
			var names []string
			for _, f := range docs {
				names = append(names, f.path)
			}
			t.Errorf("%s has package comments in %s: godoc joins them; keep one", rel, strings.Join(names, " and "))
		}
		f := docs[0]
		text := f.doc.Text()
		want := "Package " + p.name + " "
		if p.name == "main" {
			want = "Command " + path.Base(rel) + " "
		}
		if !strings.HasPrefix(text, want) {
			t.Errorf("%s: the package comment starts %q, not %q", f.path, firstLine(text), want)
		}
		if loc := importersLine.FindStringIndex(text); loc != nil {
			t.Errorf("%s: the package comment lists the package's importers (%q): drop that; the allowed-imports table in %s is the one record of who imports whom, and a test keeps it true", f.path, sentence(text, loc[0]), designFile)
		}
		if loc := leafClaim.FindStringIndex(text); loc != nil {
			if r, ok := m.row(rel); ok && len(r.may) > 0 {
				t.Errorf("%s: the package comment says %q, but its row (%s:%d) allows %s", f.path, sentence(text, loc[0]), designFile, r.line, strings.Join(r.may, ", "))
			}
		}
	}
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// sentence returns the sentence of text around offset i, on one line.
func sentence(text string, i int) string {
	start := 0
	for _, sep := range []string{". ", ".\n", "\n\n"} {
		if j := strings.LastIndex(text[:i], sep); j >= 0 && j+len(sep) > start {
			start = j + len(sep)
		}
	}
	end := len(text)
	if j := strings.Index(text[i:], "."); j >= 0 {
		end = i + j + 1
	}
	return strings.Join(strings.Fields(text[start:end]), " ")
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
