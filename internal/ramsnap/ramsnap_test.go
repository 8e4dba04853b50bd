package ramsnap

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
)

func tempFile(t *testing.T, name string, size int64) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return f
}

func writePage(t *testing.T, f *os.File, page int64, fill []byte) {
	t.Helper()
	if _, err := f.WriteAt(fill, page*PageSize); err != nil {
		t.Fatal(err)
	}
}

func TestCopyRestoreRoundTrip(t *testing.T) {
	const size = 8 << 20
	ram := tempFile(t, "ram", size)
	page := make([]byte, PageSize)
	rand.Read(page)
	// Data pages scattered over holes, a zero page written explicitly
	// (data on disk, zero in content), and the last page.
	for _, p := range []int64{0, 3, 700, 701, 2047} {
		writePage(t, ram, p, page)
	}
	writePage(t, ram, 900, make([]byte, PageSize))
	snap := tempFile(t, "snap", 0)
	got, err := Copy(snap, ram, size)
	if err != nil {
		t.Fatal(err)
	}
	if got.Pages != 5 {
		t.Errorf("Copy: %d pages, want 5 (zero pages are not stored)", got.Pages)
	}
	chk, err := Check(snap, size)
	if err != nil || chk != got {
		t.Fatalf("Check of the copy: %+v %v, want %+v", chk, err, got)
	}
	// The guest runs on: other pages change, then the rollback.
	other := make([]byte, PageSize)
	rand.Read(other)
	writePage(t, ram, 5, other)
	writePage(t, ram, 0, other)
	res, err := Restore(ram, snap, size)
	if err != nil {
		t.Fatal(err)
	}
	if res != got {
		t.Errorf("Restore: %+v, want %+v", res, got)
	}
	back := make([]byte, PageSize)
	for p, want := range map[int64][]byte{0: page, 3: page, 5: make([]byte, PageSize), 2047: page} {
		if _, err := ram.ReadAt(back, p*PageSize); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(back, want) {
			t.Errorf("page %d after Restore differs from the snapshot", p)
		}
	}
	if again, _ := Check(ram, size); again != got {
		t.Errorf("RAM after Restore digests as %+v, want %+v", again, got)
	}
}

func TestCheckDetectsChange(t *testing.T) {
	const size = 1 << 20
	f := tempFile(t, "ram", size)
	writePage(t, f, 10, bytes.Repeat([]byte{7}, PageSize))
	a, err := Check(f, size)
	if err != nil {
		t.Fatal(err)
	}
	writePage(t, f, 10, append(bytes.Repeat([]byte{7}, PageSize-1), 8))
	b, _ := Check(f, size)
	if a.Digest == b.Digest {
		t.Error("a changed byte leaves the digest as it was")
	}
	// The same content at another offset is another snapshot.
	g := tempFile(t, "moved", size)
	writePage(t, g, 11, bytes.Repeat([]byte{7}, PageSize))
	c, _ := Check(g, size)
	if c.Digest == a.Digest {
		t.Error("a page moved to another offset leaves the digest as it was")
	}
}

func TestBadSizes(t *testing.T) {
	f := tempFile(t, "ram", 1<<20)
	if _, err := Check(f, 1000); err == nil {
		t.Error("a size that is not whole pages is accepted")
	}
	if _, err := Check(f, 2<<20); err == nil {
		t.Error("a size beyond the file is accepted")
	}
}

func TestSyncAfterCopy(t *testing.T) {
	const size = 4 << 20
	ram := tempFile(t, "ram", size)
	a, b := make([]byte, PageSize), make([]byte, PageSize)
	rand.Read(a)
	rand.Read(b)
	for _, p := range []int64{1, 2, 3, 500, 1023} {
		writePage(t, ram, p, a)
	}
	snap := tempFile(t, "snap", 0)
	if _, err := Copy(snap, ram, size); err != nil {
		t.Fatal(err)
	}
	// The guest ran on while the copy was made: a page changed, one
	// became zero, a new one was written.
	writePage(t, ram, 2, b)
	writePage(t, ram, 3, make([]byte, PageSize))
	writePage(t, ram, 700, b)
	got, err := Sync(snap, ram, size)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := Check(ram, size)
	if got != want {
		t.Errorf("Sync digests %+v, RAM is %+v", got, want)
	}
	if have, _ := Check(snap, size); have != want {
		t.Errorf("the synced copy digests %+v, want %+v", have, want)
	}
	if got.Pages != 5 {
		t.Errorf("%d pages, want 5", got.Pages)
	}
	// Not a copy of that size: refused.
	other := tempFile(t, "other", size/2)
	if _, err := Sync(other, ram, size); err == nil {
		t.Error("Sync into a file of another size is accepted")
	}
}
