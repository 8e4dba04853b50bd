package linux

import (
	"context"
	"os"
	"testing"

	"github.com/gatevisor/gatevisor/internal/kit"
)

// BenchmarkProfile measures building a profile from the default kit's
// kernel image (decompress, kallsyms, BTF, banner), and loading it from the
// profile cache.
func BenchmarkProfile(b *testing.B) {
	k, err := kit.EnsureDefault(context.Background(), kit.Options{})
	if err != nil {
		b.Skipf("no default kit (it is built with apt-get): %v", err)
	}
	img, err := os.ReadFile(k.Kernel)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("build", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, err := NewProfile(img); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decompress", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, _, err := ExtractVmlinux(img); err != nil {
				b.Fatal(err)
			}
		}
	})
	vmlinux, _, err := ExtractVmlinux(img)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("kallsyms", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, err := ParseKallsyms(vmlinux); err != nil {
				b.Fatal(err)
			}
		}
	})
	dir := b.TempDir()
	if _, err := LoadProfile(k.Kernel, dir); err != nil {
		b.Fatal(err)
	}
	b.Run("cached", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, err := LoadProfile(k.Kernel, dir); err != nil {
				b.Fatal(err)
			}
		}
	})
}
