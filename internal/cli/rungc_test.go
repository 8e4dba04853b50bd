package cli

import "testing"

func TestMonitorProcs(t *testing.T) {
	for _, c := range []struct{ cpus, vcpus, want int }{
		{2, 1, 1}, {1, 1, 1}, {2, 4, 1}, {8, 2, 6}, {16, 1, 15},
	} {
		if got := monitorProcs(c.cpus, c.vcpus); got != c.want {
			t.Errorf("monitorProcs(%d CPUs, %d vCPUs) = %d, want %d", c.cpus, c.vcpus, got, c.want)
		}
	}
}
