package gate

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/gatevisor/gatevisor/internal/event"
)

// Module loads are decided once the kernel holds the module's image and
// before it parses it (security_kernel_post_read_file for finit_module,
// security_kernel_post_load_data for init_module): the gate reads the
// image the kernel is about to load from guest memory, hashes it, and
// takes the module's name from its .modinfo, so that a rule on the name,
// the file or the content decides what the kernel would really load.

// MaxModuleImage bounds the image the gate reads at a module load; a
// larger one is refused (fail closed). Debian's largest modules are a few
// MiB.
const MaxModuleImage = 64 << 20

// moduleNameLen is MODULE_NAME_LEN - 1: delete_module reads no more.
const moduleNameLen = 55

// kernel_read_file_id and kernel_load_data_id's module values
// (include/linux/kernel_read_file.h, security.h): READING_MODULE and
// LOADING_MODULE are both 2, kernel ABI since 5.7.
const readingModule = 2

// KitLabel is the object label of a module whose content is one of the
// guest kit's modules (SetKitModules).
const KitLabel = "kit"

// SetKitModules gives the SHA-256s (hex) of the modules the VM's kit
// ships: a module load whose image has one of them is labelled KitLabel,
// so that a policy can allow the device's own drivers and nothing else
// (`labelIs("kit")`).
func (g *Gate) SetKitModules(sums []string) {
	m := make(map[string]bool, len(sums))
	for _, s := range sums {
		m[s] = true
	}
	g.mu.Lock()
	g.kitModules = m
	g.mu.Unlock()
}

func (g *Gate) isKitModule(sum string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.kitModules[sum]
}

// moduleLoadEvent builds the module-load event of a hit of AtModuleFile
// (file, buf, size, id) or AtModuleData (buf, size, id, description).
// skip says the read is not a module's (firmware, a kexec image, a policy).
func (g *Gate) moduleLoadEvent(h Hook, regs Regs) (ev event.Event, skip bool, err error) {
	ev = event.Event{Class: event.ClassModule, Op: "load"}
	var buf, size, id uint64
	if h == AtModuleFile {
		buf, size, id = g.isa.arg(regs, 1), g.isa.arg(regs, 2), g.isa.arg(regs, 3)
	} else {
		buf, size, id = g.isa.arg(regs, 0), g.isa.arg(regs, 1), g.isa.arg(regs, 2)
	}
	if uint32(id) != readingModule {
		return ev, true, nil
	}
	var errs []error
	if h == AtModuleFile {
		p, perr := g.k.FilePath(g.isa.arg(regs, 0))
		if perr != nil {
			errs = append(errs, fmt.Errorf("the module file's path: %w", perr))
		}
		ev.Path = p
	}
	img, rerr := g.readImage(buf, size)
	if rerr != nil {
		errs = append(errs, rerr)
		return ev, false, errors.Join(errs...)
	}
	sum := sha256.Sum256(img)
	ev.Hash = hex.EncodeToString(sum[:])
	if g.isKitModule(ev.Hash) {
		ev.Labels = []string{KitLabel}
	}
	name, nerr := ModuleName(img)
	if nerr != nil {
		errs = append(errs, nerr)
	}
	ev.Module = name
	return ev, false, errors.Join(errs...)
}

// readImage reads the module image the kernel holds at va (vmalloc'd).
func (g *Gate) readImage(va, size uint64) ([]byte, error) {
	if size == 0 || size > MaxModuleImage {
		return nil, fmt.Errorf("module image of %d bytes: the gate reads 1 to %d", size, MaxModuleImage)
	}
	img := make([]byte, size)
	if _, err := g.k.AS.ReadVirtual(va, img); err != nil {
		return nil, fmt.Errorf("read the module image at %#x: %w", va, err)
	}
	return img, nil
}

// compressedModule are the compressions the kernel's module decompressor
// takes (CONFIG_MODULE_COMPRESS_*), by magic.
var compressedModule = []struct {
	name, suffix string
	magic        []byte
}{
	{"xz", "xz", []byte{0xfd, '7', 'z', 'X', 'Z', 0}},
	{"zstd", "zst", []byte{0x28, 0xb5, 0x2f, 0xfd}},
	{"gzip", "gz", []byte{0x1f, 0x8b}},
}

// ModuleName returns a module's name from its ELF image: the `name=` entry
// of .modinfo, which modpost writes and the kernel checks against
// .gnu.linkonce.this_module. The image is untrusted (fuzzed): a malformed
// one is an error, never a panic.
func ModuleName(img []byte) (name string, err error) {
	defer func() {
		if r := recover(); r != nil {
			name, err = "", fmt.Errorf("module image: malformed ELF (%v)", r)
		}
	}()
	for _, c := range compressedModule {
		if bytes.HasPrefix(img, c.magic) {
			// finit_module of a compressed file: the kernel decompresses it
			// only after this hook (MODULE_INIT_COMPRESSED_FILE), so the
			// name and the ELF's hash cannot be read here; the load is
			// refused, fail closed. insmod without that flag (busybox)
			// then loads the decompressed image with init_module, which
			// the gate decides on its ELF.
			return "", fmt.Errorf("module image: %s-compressed (a finit_module of a .ko.%s): the gate decides loads on the ELF image, which the kernel decompresses after its hook", c.name, c.suffix)
		}
	}
	f, err := elf.NewFile(bytes.NewReader(img))
	if err != nil {
		return "", fmt.Errorf("module image: %w", err)
	}
	s := f.Section(".modinfo")
	if s == nil || s.Type == elf.SHT_NOBITS {
		return "", errors.New("module image: no .modinfo section")
	}
	if s.Size > uint64(len(img)) {
		return "", errors.New("module image: .modinfo larger than the image")
	}
	info, err := s.Data()
	if err != nil {
		return "", fmt.Errorf("module image: .modinfo: %w", err)
	}
	for _, kv := range bytes.Split(info, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("name=")); ok {
			if len(v) == 0 || len(v) > moduleNameLen {
				return "", fmt.Errorf("module image: name of %d bytes", len(v))
			}
			return string(v), nil
		}
	}
	return "", errors.New("module image: no name= in .modinfo")
}

// readUserString reads a NUL-terminated string of at most max bytes at va
// in user memory.
func readUserString(r VirtualReader, va uint64, max int) (string, error) {
	if va == 0 || va >= userTopOf(r) {
		return "", fmt.Errorf("gate: %#x is not a user pointer", va)
	}
	buf := make([]byte, max+1)
	n := 0
	for n < len(buf) {
		chunk := min(len(buf)-n, pageSize-int((va+uint64(n))%pageSize))
		if _, err := r.ReadVirtual(va+uint64(n), buf[n:n+chunk]); err != nil {
			if i := bytes.IndexByte(buf[:n], 0); i >= 0 {
				return string(buf[:i]), nil
			}
			return "", fmt.Errorf("gate: read string at %#x: %w", va+uint64(n), err)
		}
		if i := bytes.IndexByte(buf[n:n+chunk], 0); i >= 0 {
			return string(buf[:n+i]), nil
		}
		n += chunk
	}
	return "", fmt.Errorf("gate: string at %#x longer than %d bytes", va, max)
}
