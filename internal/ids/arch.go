package ids

// arm64NotChecked are the checks that do not run on an arm64 guest yet,
// each with what it would need: they are reported as not applicable with
// that reason, never as clean.
var arm64NotChecked = map[string]string{
	CheckDispatch:  "arm64: invoke_syscall indexes sys_call_table, which syscall-table checks; there is no dispatch code to compare (x86's x64_sys_call)",
	CheckInline:    "not implemented for arm64: the code comparison decodes x86 instructions only",
	CheckIDT:       "arm64 has no IDT; its exception vectors (VBAR_EL1, vectors) are not checked yet",
	CheckOpsTables: "not implemented for arm64: the image facts hold no operation tables",
}

// notCheckedHere returns why check name does not run on this guest, or "".
func (i *Inspector) notCheckedHere(name string) string {
	if i.K != nil && i.K.Profile != nil && i.K.Profile.IsARM64() {
		return arm64NotChecked[name]
	}
	if i.isARMHF() {
		return armhfNotChecked[name]
	}
	return ""
}
