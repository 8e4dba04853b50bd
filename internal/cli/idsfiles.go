package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/termtext"
)

// runServedFiles is `gatevisor ids --vm NAME files --served`: the shares
// the monitor serves and the guest processes whose fd tables hold their
// files, read by introspection.
func runServedFiles(ctx context.Context, t *idsTarget, query string) error {
	if query != "files" || t.vm == "" {
		return errors.New("--served goes with files and --vm NAME")
	}
	c, err := clientFor(t.vm)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	sf, err := c.ServedFiles(ctx)
	if err != nil {
		return err
	}
	if t.asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(sf)
	}
	return printServedFiles(os.Stdout, &sf)
}

// printServedFiles writes the shares, then one row per open descriptor;
// the guest's names are escaped.
func printServedFiles(w io.Writer, sf *api.ServedFiles) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SHARE\tGUEST PATH\tHOST DIR\tMODE\tREQUESTS\tDECIDED\tDENIED")
	for _, s := range sf.Shares {
		mode := "rw"
		if s.ReadOnly {
			mode = "ro"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\n", s.Name, s.GuestPath, termtext.Escape(s.HostDir), mode, s.Requests, s.Decided, s.Denied)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PID\tUID\tCOMM\tEXE\tFD\tMODE\tPATH")
	for _, o := range sf.Open {
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%d\t%s\t%s\n", o.PID, o.UID, termtext.Escape(o.Comm), termtext.Escape(o.Exe), o.FD, o.Mode, termtext.Escape(o.Path))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "%d open on served files\n", len(sf.Open))
	return nil
}
