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
