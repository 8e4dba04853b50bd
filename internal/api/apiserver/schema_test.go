package apiserver

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/gatevisor/gatevisor/internal/api"
)

// TestSchemasMatchTypes checks that each JSON field of the API's types is
// a property of its schema in openapi.yaml and the other way round: a
// field added to a type and not to the spec (where additionalProperties
// is false, a client validating against it would reject every answer
// holding it) fails here, not in a user's client.
func TestSchemasMatchTypes(t *testing.T) {
	doc, err := openapi3.NewLoader().LoadFromData(api.Spec)
	if err != nil {
		t.Fatalf("openapi.yaml: %v", err)
	}
	for name, v := range map[string]any{
		"Status": api.Status{}, "EventsStatus": api.EventsStatus{}, "AuditStatus": api.AuditStatus{},
		"ResponsesStatus": api.ResponsesStatus{}, "IDSStatus": api.IDSStatus{}, "PolicyStatus": api.PolicyStatus{},
		"GateStatus": api.GateStatus{}, "SyscallGateStatus": api.SyscallGateStatus{}, "NetStatus": api.NetStatus{},
		"NetIsolation": api.NetIsolation{}, "NetGateStats": api.NetGateStats{}, "StopRequest": api.StopRequest{},
		"StopStatus": api.StopStatus{}, "ExecRequest": api.ExecRequest{}, "ExecResult": api.ExecResult{},
		"MemoryLayout": api.MemoryLayout{}, "Breakpoint": api.Breakpoint{},
	} {
		ref := doc.Components.Schemas[name]
		if ref == nil || ref.Value == nil {
			t.Errorf("openapi.yaml has no schema %s", name)
			continue
		}
		var inSpec []string
		for p := range ref.Value.Properties {
			inSpec = append(inSpec, p)
		}
		inGo := jsonFields(reflect.TypeOf(v))
		slices.Sort(inSpec)
		slices.Sort(inGo)
		for _, f := range inGo {
			if !slices.Contains(inSpec, f) {
				t.Errorf("%s: field %q of the Go type is not in openapi.yaml", name, f)
			}
		}
		for _, p := range inSpec {
			if !slices.Contains(inGo, p) {
				t.Errorf("%s: property %q of openapi.yaml is not a field of the Go type", name, p)
			}
		}
	}
}

// jsonFields are the JSON names of struct type t's fields, embedded
// structs' included.
func jsonFields(t reflect.Type) []string {
	var out []string
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
			out = append(out, jsonFields(f.Type)...)
			continue
		}
		if name == "" {
			name = f.Name
		}
		out = append(out, name)
	}
	return out
}
