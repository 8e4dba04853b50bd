package ids

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// sameAsStd checks that AppendTasksJSON decodes to what encoding/json's
// encoding of ts decodes to.
func sameAsStd(t *testing.T, ts []linux.Task) {
	t.Helper()
	fast := AppendTasksJSON(nil, ts)
	if !json.Valid(fast) {
		t.Fatalf("invalid JSON: %q", fast)
	}
	std, err := json.Marshal(ts)
	if err != nil {
		t.Fatal(err)
	}
	var a, b any
	if err := json.Unmarshal(fast, &a); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(std, &b); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("typed encoder differs from encoding/json:\n%s\n%s", fast, std)
	}
}

func TestEncodeTasksParallel(t *testing.T) {
	for _, n := range []int{0, 1, 511, 512, 513, 1050} {
		ts := make([]linux.Task, n)
		for i := range ts {
			ts[i] = linux.Task{PID: i, Comm: "c\x00" + string(rune('a'+i%26)), Exe: "/bin/x"}
		}
		got, err := EncodeResult(ts)
		if err != nil {
			t.Fatal(err)
		}
		if want := AppendTasksJSON(nil, ts); string(got) != string(want) {
			t.Fatalf("%d tasks: the parallel encoding differs from the sequential one", n)
		}
		sameAsStd(t, ts)
	}
}

func TestAppendTasksJSON(t *testing.T) {
	sameAsStd(t, nil)
	sameAsStd(t, []linux.Task{})
	sameAsStd(t, []linux.Task{
		{Addr: 1<<64 - 1, PID: 1, TGID: 1, State: "S", Comm: "init", Exe: "/sbin/init", StartTime: 1 << 63, Threads: 1, PGD: 0x1000},
		{Addr: 0xffff888004000000, PID: -1, PPID: 2, UID: 1<<32 - 1, Comm: "a\"b\\c\n\r\t\x00\x1f<>&\u2028", Exe: "\xff\xfe/x\xc3", KernelThread: true},
	})
}

func FuzzAppendTasksJSON(f *testing.F) {
	f.Add("sleep", "/bin/busybox", "S", int64(42), uint64(0xffff888004000000))
	f.Add("\x00\xff\"\\", "\xed\xa0\x80/\u2029", "", int64(-7), uint64(0))
	f.Fuzz(func(t *testing.T, comm, exe, state string, pid int64, addr uint64) {
		sameAsStd(t, []linux.Task{{Addr: addr, PID: int(pid), TGID: int(pid >> 3), PPID: int(-pid), UID: uint32(addr), State: state, Comm: comm, Exe: exe, StartTime: addr >> 1, Threads: int(pid), KernelThread: pid%2 == 0, PGD: addr << 2}})
	})
}

func BenchmarkEncodeTasks(b *testing.B) {
	ts := make([]linux.Task, 1050)
	for i := range ts {
		ts[i] = linux.Task{Addr: 0xffff888004123400 + uint64(i)*0x1000, PID: 100 + i, TGID: 100 + i, PPID: 90, State: "S", Comm: "sleep", Exe: "/bin/busybox", StartTime: 1234567890123, Threads: 1, PGD: 0x4567000}
	}
	b.Run("typed", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			EncodeResult(ts)
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			json.Marshal(ts)
		}
	})
}
