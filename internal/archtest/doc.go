// Package archtest holds the tests that make gatevisor's architecture rules
// fail when broken; it has no code of its own to import.
//
// The rules (docs/design.md, "Architecture"):
//   - Every import one gatevisor package makes of another, in its non-test
//     files, is in the importer's row of the allowed-imports table in
//     docs/design.md, and every entry of the table is such an import: the
//     table is the real import graph. Every package has a row and every row
//     is a package. A row names only packages listed below it, so arrows
//     point down only. A package never imports what its row's "never
//     imports" column names (the design's rules, such as "the monitor knows
//     no HTTP"), and only _test.go files import a package marked test only.
//   - unsafe is imported only in files named *_unsafe.go (optionally with a
//     GOOS or GOARCH suffix), so that the code that can break memory safety
//     is found by its name.
//   - Every package has one package comment, starting "Package name" (or
//     "Command name"), and it does not list the package's importers: the
//     table is the one record of who imports whom. A comment that says the
//     package imports nothing from gatevisor is true of the package's row.
//
// The tests read the module's files in-process (go/build, go/parser) rather
// than through go list, so that Go's test cache sees every file and
// directory they depend on: a cached pass cannot outlive a changed import.
package archtest
