package gdbrsp

import "testing"

// TestTargetDescriptionDuplicateName: qemu-system-arm names q0-q15 twice.
// Such a name is not looked up (neither definition is picked by chance)
// and the 'g' decoding leaves it out; the other registers stay usable.
func TestTargetDescriptionDuplicateName(t *testing.T) {
	td, err := parseTargetDescription(fetchFrom(map[string][]byte{"target.xml": []byte(`<target>` +
		`<feature name="f"><reg name="r0" bitsize="32"/><reg name="a" bitsize="32"/><reg name="a" bitsize="32"/><reg name="pc" bitsize="32"/></feature></target>`)}))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := td.Register("a"); ok {
		t.Error(`Register("a") found: the name is defined twice`)
	}
	pc, ok := td.Register("pc")
	if !ok || pc.Num != 3 || pc.Offset != 12 {
		t.Errorf(`Register("pc") = %+v, %v; want number 3 at offset 12`, pc, ok)
	}
	regs, err := decodeGReply(td, []byte("01000000"+"02000000"+"03000000"+"04000000"))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := regs["a"]; ok || regs["r0"] != 1 || regs["pc"] != 4 {
		t.Errorf("decoded %v; want r0=1 pc=4 and no a", regs)
	}
}
