package termtext

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
	"unsafe"
)

func TestEscape(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"empty", "", ""},
		{"plain", "sshd", "sshd"},
		{"path", "/usr/bin/x y-z_1.2", "/usr/bin/x y-z_1.2"},
		{"non-ASCII letters", "café Ünïcödé 日本語 🐧", "café Ünïcödé 日本語 🐧"},
		{"forged row", "x\n    1     0     0 S init", `x\n    1     0     0 S init`},
		{"clear screen", "a\x1b[2J\x1b[Hb", `a\x1b[2J\x1b[Hb`},
		{"carriage return", "evil\rgood", `evil\rgood`},
		{"tab", "a\tb", `a\tb`},
		{"backslash", `a\nb`, `a\\nb`},
		{"NUL and BEL", "\x00\x07", `\x00\x07`},
		{"DEL", "a\x7fb", `a\x7fb`},
		{"invalid UTF-8", "a\xff\xfeb", `a\xff\xfeb`},
		{"lone 8-bit CSI byte", "\x9b2J", `\x9b2J`},
		{"C1 CSI rune", "\u009b2J", `\u{9b}2J`},
		{"C1 NEL", "a\u0085b", `a\u{85}b`},
		{"truncated rune", "ab\xe6\x97", `ab\xe6\x97`},
		{"RLO", "txt\u202Eexe.sh", `txt\u{202e}exe.sh`},
		{"isolates", "\u2066\u2067\u2068\u2069", `\u{2066}\u{2067}\u{2068}\u{2069}`},
		{"embeddings", "\u202a\u202b\u202c\u202d", `\u{202a}\u{202b}\u{202c}\u{202d}`},
		{"marks", "\u200e\u200f\u061c", `\u{200e}\u{200f}\u{61c}`},
		{"line separator", "a\u2028b\u2029", `a\u{2028}b\u{2029}`},
		{"replacement char is text", "\uFFFD", "\uFFFD"},
		{"zero-width joiner is text", "👩\u200d💻", "👩\u200d💻"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Escape(tc.in); got != tc.want {
				t.Errorf("Escape(%q) (-want +got):\n-%s\n+%s", tc.in, tc.want, got)
			}
		})
	}
}

func TestEscapeReturnsSameString(t *testing.T) {
	s := strings.Repeat("kworker/0:1 café ", 4)
	got := Escape(s)
	if unsafe.StringData(got) != unsafe.StringData(s) {
		t.Error("Escape copied a string that needed no escaping")
	}
	if n := testing.AllocsPerRun(100, func() { _ = Escape(s) }); n != 0 {
		t.Errorf("Escape of safe text: %v allocations, want 0", n)
	}
}

func FuzzEscape(f *testing.F) {
	for _, s := range []string{
		"", "init", "x\n    1     0     0 S init", "\x1b[2J\x1b[H", "mod\r",
		"\u202Egnp.exe", `back\slash`, "\xff\xc2", "\u009b", "日本語",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e := Escape(s)
		if !utf8.ValidString(e) {
			t.Fatalf("Escape(%q) = %q: not valid UTF-8", s, e)
		}
		for i := 0; i < len(e); i++ {
			if c := e[i]; c < 0x20 || c == 0x7f {
				t.Fatalf("Escape(%q) = %q: control byte %#x at %d", s, e, c, i)
			}
		}
		for _, r := range e {
			if unsafeRune(r) {
				t.Fatalf("Escape(%q) = %q: rune %U left", s, e, r)
			}
		}
		if u, err := unescape(e); err != nil || u != s {
			t.Fatalf("unescape(Escape(%q)) = %q, %v: escaping is ambiguous", s, u, err)
		}
		if (e == s) != (firstUnsafe(s) < 0) {
			t.Fatalf("Escape(%q) = %q, but firstUnsafe = %d", s, e, firstUnsafe(s))
		}
	})
}

// unescape inverts Escape; it proves the escaping is unambiguous.
func unescape(e string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(e); {
		if e[i] != '\\' {
			b.WriteByte(e[i])
			i++
			continue
		}
		if i+1 >= len(e) {
			return "", fmt.Errorf("trailing backslash")
		}
		switch e[i+1] {
		case '\\':
			b.WriteByte('\\')
			i += 2
		case 'n':
			b.WriteByte('\n')
			i += 2
		case 't':
			b.WriteByte('\t')
			i += 2
		case 'r':
			b.WriteByte('\r')
			i += 2
		case 'x':
			if i+4 > len(e) {
				return "", fmt.Errorf("short \\x at %d", i)
			}
			v, err := strconv.ParseUint(e[i+2:i+4], 16, 8)
			if err != nil {
				return "", err
			}
			b.WriteByte(byte(v))
			i += 4
		case 'u':
			end := strings.IndexByte(e[i:], '}')
			if end < 0 || e[i+2] != '{' {
				return "", fmt.Errorf("bad \\u at %d", i)
			}
			v, err := strconv.ParseUint(e[i+3:i+end], 16, 32)
			if err != nil {
				return "", err
			}
			b.WriteRune(rune(v))
			i += end + 1
		default:
			return "", fmt.Errorf("unknown escape %q at %d", e[i:i+2], i)
		}
	}
	return b.String(), nil
}

func BenchmarkEscape(b *testing.B) {
	for _, s := range []string{"systemd-journald", "x\n    1     0     0 S init"} {
		b.Run(strconv.Quote(s), func(b *testing.B) {
			for b.Loop() {
				_ = Escape(s)
			}
		})
	}
}
