package metrics

import (
	"fmt"
	"io"
	"sort"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// MaxExposition bounds one VM's exposition a merge reads (a monitor is
// trusted less than the daemon that merges: it runs the guest's
// introspection).
const MaxExposition = 8 << 20

// Merge writes, as one text exposition, the families of every exposition
// in ins (one per VM, each labelled with its vm), merged by name: a family
// several VMs report is written once, with every VM's samples. A family
// whose type or help differs between inputs is an error, as is an input
// that does not parse.
func Merge(w io.Writer, ins map[string]io.Reader) error {
	fams := map[string]*dto.MetricFamily{}
	names := make([]string, 0, len(ins))
	for vm := range ins {
		names = append(names, vm)
	}
	sort.Strings(names)
	for _, vm := range names {
		p := expfmt.NewTextParser(model.UTF8Validation)
		got, err := p.TextToMetricFamilies(io.LimitReader(ins[vm], MaxExposition))
		if err != nil {
			return fmt.Errorf("metrics of %s: %w", vm, err)
		}
		for name, f := range got {
			have, ok := fams[name]
			if !ok {
				fams[name] = f
				continue
			}
			if have.GetType() != f.GetType() || have.GetHelp() != f.GetHelp() {
				return fmt.Errorf("metrics of %s: family %s differs from another VM's (type %s, help %q)", vm, name, f.GetType(), f.GetHelp())
			}
			have.Metric = append(have.Metric, f.Metric...)
		}
	}
	order := make([]string, 0, len(fams))
	for n := range fams {
		order = append(order, n)
	}
	sort.Strings(order)
	enc := expfmt.NewEncoder(w, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, n := range order {
		if err := enc.Encode(fams[n]); err != nil {
			return fmt.Errorf("metrics: encode %s: %w", n, err)
		}
	}
	return nil
}
