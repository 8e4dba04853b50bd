package linux

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestTaskReaderAgreesWithTaskAt reads tasks with one reader, in turn and
// again, and after a task changed in memory: each read is TaskAt's, none
// keeps what an earlier one saw.
func TestTaskReaderAgreesWithTaskAt(t *testing.T) {
	s := buildDetailScene(t, rssStruct)
	k := s.kernelOf()
	tr, err := k.NewTaskReader()
	if err != nil {
		t.Fatal(err)
	}
	for _, pid := range []int{101, 100, 2, 101, 1} {
		want, err1 := k.TaskAt(s.tasks[pid])
		got, err2 := tr.Read(s.tasks[pid])
		if err1 != nil || err2 != nil {
			t.Fatalf("pid %d: %v %v", pid, err1, err2)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("pid %d (-TaskAt +Read):\n%s", pid, diff)
		}
	}
	// The task's bytes change (its comm): a read after sees the new ones.
	s.putBytes(s.tasks[101]+s.off("task_struct.comm"), []byte("renamed\x00"))
	got, err := tr.Read(s.tasks[101])
	if err != nil || got.Comm != "renamed" {
		t.Fatalf("after the change: %q, %v", got.Comm, err)
	}
}

// TestTaskReaderFilePath checks the reader's FilePath against the
// kernel's, in turn, again, and after a dentry's name changed in memory.
func TestTaskReaderFilePath(t *testing.T) {
	s := buildDetailScene(t, rssStruct)
	k := s.kernelOf()
	tr, err := k.NewTaskReader()
	if err != nil {
		t.Fatal(err)
	}
	console := s.dentry("console", s.dirs["dev"], "")
	hosts := s.dentry("hosts", s.dirs["tmp"], "")
	files := []uint64{
		s.newFile(fileSpec{mnt: s.rootMnt, dentry: console}),
		s.newFile(fileSpec{mnt: s.rootMnt, dentry: hosts}),
	}
	for _, f := range append(files, files...) {
		want, err1 := k.FilePath(f)
		got, err2 := tr.FilePath(f)
		if err1 != nil || err2 != nil || got != want {
			t.Errorf("file %#x: reader %q, %v; kernel %q, %v", f, got, err2, want, err1)
		}
	}
	if got, err := tr.FilePath(0x1000); err == nil {
		t.Errorf("a user address read as a file: %q", got)
	}
	// The parent directory moves: the next read sees it.
	s.put64(console+s.off("dentry.d_parent"), s.dirs["tmp"])
	want, err1 := k.FilePath(files[0])
	got, err2 := tr.FilePath(files[0])
	if err1 != nil || err2 != nil || got != want || got != "/tmp/console" {
		t.Errorf("after the move: reader %q, %v; kernel %q, %v", got, err2, want, err1)
	}
}

// TestTaskReaderUserRegsAddr checks the reader's UserRegsAddr, whose
// profile look-ups are made once, against the kernel's, read after read.
func TestTaskReaderUserRegsAddr(t *testing.T) {
	s := buildDetailScene(t, rssStruct)
	k := s.kernelOf()
	tr, err := k.NewTaskReader()
	if err != nil {
		t.Fatal(err)
	}
	for _, pid := range []int{101, 100, 2, 101} {
		task := s.tasks[pid]
		for _, gs := range []uint64{0, 0x1000, task, task &^ 0xfff} {
			want, err1 := k.UserRegsAddr(gs, task)
			got, err2 := tr.UserRegsAddr(gs, task)
			if got != want || (err1 == nil) != (err2 == nil) {
				t.Errorf("pid %d, gs %#x: reader %#x, %v; kernel %#x, %v", pid, gs, got, err2, want, err1)
			}
		}
	}
}
