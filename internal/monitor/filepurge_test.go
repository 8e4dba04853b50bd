package monitor

import (
	"strings"
	"testing"

	"github.com/gatevisor/gatevisor/internal/api"
)

func TestPagePoisoned(t *testing.T) {
	for cmd, want := range map[string]bool{
		"console=ttyS0 quiet":                 false,
		"console=ttyS0 page_poison=1":         true,
		"page_poison=on init_on_free=0":       true,
		"page_poison=0":                       false,
		"xpage_poison=1 gatevisor.files=a:/b": false,
	} {
		if got := pagePoisoned(cmd); got != want {
			t.Errorf("pagePoisoned(%q) = %v, want %v", cmd, got, want)
		}
	}
}

func TestHeldText(t *testing.T) {
	got := heldText([]api.PurgePage{{PFN: 0xd57d, Kind: "anonymous memory", Owners: []api.PurgeOwner{{PID: 144, Comm: "cat"}}},
		{PFN: 0x2d29, Kind: "slab (kernel object cache)", Detail: "cache kmalloc-4k"}})
	for _, want := range []string{"pfn 0xd57d: anonymous memory, pid 144 (cat)", "pfn 0x2d29: slab (kernel object cache) [cache kmalloc-4k]"} {
		if !strings.Contains(got, want) {
			t.Errorf("heldText = %q, want %q in it", got, want)
		}
	}
}
