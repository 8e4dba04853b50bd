package linux

import "testing"

func TestIsBuddy(t *testing.T) {
	old := &PageLayout{buddyType: 0x80}
	newer := &PageLayout{topByteTypes: true, buddyType: 0xf0, slabType: 0xf5}
	for _, tc := range []struct {
		name      string
		l         *PageLayout
		pt        uint32
		buddy     bool
		slabTyped bool
	}{
		{"6.1 buddy", old, 0xffffff7f, true, false},
		{"6.1 no type (_mapcount -1)", old, 0xffffffff, false, false},
		{"6.1 mapped once", old, 0, false, false},
		{"6.1 table", old, 0xfffffdff, false, false},
		{"6.12 buddy", newer, 0xf0000000, true, false},
		{"6.12 buddy with order bits", newer, 0xf0000003, true, false},
		{"6.12 slab", newer, 0xf5000000, false, true},
		{"6.12 none", newer, 0xffffffff, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.l.isBuddy(tc.pt); got != tc.buddy {
				t.Errorf("isBuddy(%#x) = %v, want %v", tc.pt, got, tc.buddy)
			}
			if got := tc.l.isSlabType(tc.pt); got != tc.slabTyped {
				t.Errorf("isSlabType(%#x) = %v, want %v", tc.pt, got, tc.slabTyped)
			}
		})
	}
}
