package vmi

import (
	"os"
	"path/filepath"
	"testing"
)

// benchSpace maps 512 4 KiB pages in 4-level tables. With file set, guest
// RAM is read from a file with pread (as from a dump); otherwise from memory
// with a copy (as from the live mapping).
func benchSpace(b *testing.B, cache *TranslationCache, file bool) *AddressSpace {
	m := newTestMem(8 << 20)
	pt := newPageTables(m, 4)
	for i := uint64(0); i < 512; i++ {
		pt.mapPage(0x7f0000000000+i*PageSize4K, 0x400000+i*PageSize4K, PageSize4K, 0)
	}
	var mem PhysicalMemory = m
	if file {
		path := filepath.Join(b.TempDir(), "ram")
		if err := os.WriteFile(path, m.b, 0o600); err != nil {
			b.Fatal(err)
		}
		raw, err := OpenRaw(path, nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { raw.Close() })
		mem = raw
	}
	return &AddressSpace{Mem: mem, CR3: pt.root, Cache: cache}
}

func benchTranslate(b *testing.B, cache *TranslationCache, file bool) {
	as := benchSpace(b, cache, file)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		va := 0x7f0000000000 + uint64(i%512)*PageSize4K + 0x18
		if _, _, err := as.Translate(va); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTranslate measures a 4-level 4 KiB translation: an uncached walk,
// a cache hit re-validated against the leaf entry (live memory), and a hit
// on static memory (dumps); over RAM in memory (like the live mapping) and
// over a file read with pread (like a dump).
func BenchmarkTranslate(b *testing.B) {
	for _, src := range []struct {
		name string
		file bool
	}{{"mem", false}, {"file", true}} {
		b.Run(src.name+"/uncached", func(b *testing.B) { benchTranslate(b, nil, src.file) })
		b.Run(src.name+"/cached-live", func(b *testing.B) { benchTranslate(b, NewTranslationCache(), src.file) })
		b.Run(src.name+"/cached-static", func(b *testing.B) { benchTranslate(b, &TranslationCache{Static: true}, src.file) })
	}
}
