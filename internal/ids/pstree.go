package ids

import (
	"fmt"
	"io"
	"sort"

	"github.com/gatevisor/gatevisor/internal/termtext"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// maxTreeDepth bounds rendering of a (possibly corrupt) parent chain.
const maxTreeDepth = 64

// WriteTree renders processes as a tree by parent pid. Processes whose
// parent is missing (or that form a cycle) become roots, so nothing is lost.
// A process's comm is the guest's choice: it is escaped (termtext.Escape),
// so that it cannot forge a line of the tree or reach the terminal as a
// control sequence.
func WriteTree(w io.Writer, tasks []linux.Task) error {
	byPID := make(map[int]linux.Task, len(tasks))
	children := map[int][]int{}
	for _, t := range tasks {
		byPID[t.PID] = t
	}
	var roots []int
	for _, t := range tasks {
		if _, ok := byPID[t.PPID]; ok && t.PPID != t.PID {
			children[t.PPID] = append(children[t.PPID], t.PID)
		} else {
			roots = append(roots, t.PID)
		}
	}
	for _, c := range children {
		sort.Ints(c)
	}
	sort.Ints(roots)
	printed := map[int]bool{}
	var walk func(pid int, prefix string, last bool, depth int) error
	walk = func(pid int, prefix string, last bool, depth int) error {
		if printed[pid] || depth > maxTreeDepth {
			return nil
		}
		printed[pid] = true
		t := byPID[pid]
		branch, next := "├─ ", prefix+"│  "
		if last {
			branch, next = "└─ ", prefix+"   "
		}
		if depth == 0 {
			branch, next = "", ""
		}
		if _, err := fmt.Fprintf(w, "%s%s%s(%d)\n", prefix, branch, termtext.Escape(t.Comm), t.PID); err != nil {
			return err
		}
		kids := children[pid]
		for i, c := range kids {
			if err := walk(c, next, i == len(kids)-1, depth+1); err != nil {
				return err
			}
		}
		return nil
	}
	for _, r := range roots {
		if err := walk(r, "", true, 0); err != nil {
			return err
		}
	}
	// Members of parent cycles are reachable from no root: print them too.
	for _, t := range tasks {
		if !printed[t.PID] {
			if err := walk(t.PID, "", true, 0); err != nil {
				return err
			}
		}
	}
	return nil
}
