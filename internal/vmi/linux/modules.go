package linux

// Module is one loadable kernel module.
type Module struct {
	// Addr is the struct module's kernel virtual address.
	Addr uint64 `json:"addr"`
	Name string `json:"name"`
	// Base and Size describe the module's core text-and-data layout.
	Base uint64 `json:"base"`
	Size uint64 `json:"size"`
	// State is live, coming, going or unformed.
	State string `json:"state"`
}

// Modules returns the modules on the kernel's modules list.
func (k *Kernel) Modules() ([]Module, error) { return nil, ErrNotImplemented }

// ModulesFromSysfs returns the modules that module_kset's kobjects point to.
func (k *Kernel) ModulesFromSysfs() ([]Module, error) { return nil, ErrNotImplemented }

// ScanModules scans the module area for struct module candidates that validate.
func (k *Kernel) ScanModules() ([]Module, error) { return nil, ErrNotImplemented }
