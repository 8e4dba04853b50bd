package ids

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// TestEncodeTasksEveryField: the typed encoder writes every field of
// linux.Task, as encoding/json does, so a field added to Task and not to
// the encoder fails here rather than vanish from `ids ps --json`.
func TestEncodeTasksEveryField(t *testing.T) {
	var tk linux.Task
	v := reflect.ValueOf(&tk).Elem()
	for i := 0; i < v.NumField(); i++ {
		f := v.Field(i)
		switch f.Kind() {
		case reflect.String:
			f.SetString("x\x00\"" + v.Type().Field(i).Name)
		case reflect.Int:
			f.SetInt(-int64(i) - 1)
		case reflect.Uint64, reflect.Uint32:
			f.SetUint(1<<(f.Type().Bits()-1) + uint64(i))
		case reflect.Bool:
			f.SetBool(true)
		default:
			t.Fatalf("Task.%s is a %v: teach this test and AppendTasksJSON", v.Type().Field(i).Name, f.Kind())
		}
	}
	sameAsStd(t, []linux.Task{tk})
	var keys []map[string]any
	if err := json.Unmarshal(AppendTasksJSON(nil, []linux.Task{tk}), &keys); err != nil {
		t.Fatal(err)
	}
	if len(keys[0]) != v.NumField() {
		t.Errorf("typed encoder writes %d keys, Task has %d fields", len(keys[0]), v.NumField())
	}
}

// TestDetailQueriesAreQueries: the process-detail queries are answered by
// Query (and so by the API and the dump path alike) and listed.
func TestDetailQueriesAreQueries(t *testing.T) {
	for _, q := range []string{"threads", "args", "env", "files"} {
		found := false
		for _, x := range Queries {
			found = found || x == q
		}
		if !found {
			t.Errorf("%s is not in Queries", q)
		}
		if !strings.Contains(ErrUnknownQuery.Error(), q) {
			t.Errorf("ErrUnknownQuery does not name %s", q)
		}
	}
	if _, ok, _ := detailQuery(nil, "ps"); ok {
		t.Error("detailQuery answers ps")
	}
}

// TestDetailOnBrokenKernel: a kernel whose structures cannot be read
// fails each detail query with an error, never a panic or an empty
// answer passed off as whole.
func TestDetailOnBrokenKernel(t *testing.T) {
	in := New(&linux.Kernel{Profile: &linux.Profile{}, Mem: memBytes{}, AS: nil}, DefaultOptions())
	for _, q := range []string{"threads", "args", "env", "files"} {
		res, err := Query(in, q)
		if err == nil || Partial(res, err) {
			t.Errorf("%s on a kernel without BTF = %v, %v; want an error", q, res, err)
		}
	}
}
