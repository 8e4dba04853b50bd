package vmi

import (
	"errors"
	"strings"
	"testing"
)

func TestReadHelpers(t *testing.T) {
	m := newTestMem(1 << 20)
	pt := newPageTables(m, 4)
	pt.mapPage(0x10000, 0x80000, PageSize4K, 0)
	pt.mapPage(0x11000, 0x90000, PageSize4K, 0)
	as := &AddressSpace{Mem: m, CR3: pt.root}
	m.put64(0x80010, 0x1122334455667788)
	if v, err := ReadU64(as, 0x10010); err != nil || v != 0x1122334455667788 {
		t.Errorf("ReadU64 = %#x, %v", v, err)
	}
	if v, err := ReadU32(as, 0x10010); err != nil || v != 0x55667788 {
		t.Errorf("ReadU32 = %#x, %v", v, err)
	}
	// A string that crosses into the next page.
	copy(m.b[0x80ffc:], "swap")
	copy(m.b[0x90000:], "per/0\x00")
	tests := []struct {
		name    string
		va      uint64
		max     int
		want    string
		wantErr error
	}{
		{"across pages", 0x10ffc, 16, "swapper/0", nil},
		{"exact max", 0x10ffc, 9, "swapper/0", nil},
		{"too long", 0x10ffc, 4, "swap", ErrStringTooLong},
		{"empty", 0x10020, 4, "", nil},
		{"ends at unmapped page", 0x11ffe, 8, "", ErrNotMapped},
	}
	copy(m.b[0x90ffe:], "ab")
	tests[len(tests)-1].want = "ab"
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ReadCString(as, tt.va, tt.max)
			if got != tt.want || !errors.Is(err, tt.wantErr) && !(tt.wantErr == nil && err == nil) {
				t.Errorf("ReadCString = %q, %v; want %q, %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
	if _, err := ReadCString(as, 0x10000, MaxStringLen+1); err == nil {
		t.Error("absurd max accepted")
	}
}

func TestWalkList(t *testing.T) {
	m := newTestMem(1 << 20)
	pt := newPageTables(m, 4)
	pt.mapPage(0x10000, 0x80000, PageSize4K, 0)
	as := &AddressSpace{Mem: m, CR3: pt.root}
	const head = 0x10000
	link := func(from, to uint64) { m.put64(0x80000+from-0x10000, to) }
	// head -> a -> b -> c -> head
	link(head, 0x10100)
	link(0x10100, 0x10200)
	link(0x10200, 0x10300)
	link(0x10300, head)
	var got []string
	walk := func(max int) error {
		got = got[:0]
		return WalkList(as, head, max, func(n uint64) error {
			got = append(got, strings.TrimPrefix(string(rune('a'+(n-0x10100)/0x100)), ""))
			return nil
		})
	}
	if err := walk(10); err != nil || strings.Join(got, "") != "abc" {
		t.Errorf("walk = %q, %v", got, err)
	}
	if err := walk(2); !errors.Is(err, ErrListTooLong) {
		t.Errorf("bounded walk: %v", err)
	}
	// c -> b: a cycle that never returns to head.
	link(0x10300, 0x10200)
	if err := walk(100); !errors.Is(err, ErrListCycle) {
		t.Errorf("cycle: %v", err)
	}
	// b -> unmapped.
	link(0x10200, 0xdead0000)
	if err := walk(100); !errors.Is(err, ErrNotMapped) {
		t.Errorf("unmapped: %v", err)
	}
	// Empty list.
	link(head, head)
	if err := walk(100); err != nil || len(got) != 0 {
		t.Errorf("empty: %q, %v", got, err)
	}
	stop := errors.New("stop")
	link(head, 0x10100)
	if err := WalkList(as, head, 10, func(uint64) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("fn error: %v", err)
	}
}
