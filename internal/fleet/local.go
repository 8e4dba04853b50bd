package fleet

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/gatevisor/gatevisor/internal/safefile"
)

// LocalFile is where gatevisor serve says, in its state directory, how to
// reach the fleet's NATS: monitors started with run --fleet and the fleet
// commands read it when no --nats is given.
const LocalFile = "fleet.json"

// Local is the content of LocalFile.
type Local struct {
	URL       string `json:"url"`
	TokenFile string `json:"token_file,omitempty"`
	CredsFile string `json:"creds_file,omitempty"`
}

// WriteLocal writes l to dir/LocalFile (mode 0600, no symbolic links).
func WriteLocal(dir string, l Local) error {
	b, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		return err
	}
	p := filepath.Join(dir, LocalFile)
	tmp := p + ".new"
	if err := safefile.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("fleet: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("fleet: %w", err)
	}
	return nil
}

// ErrNoLocal is returned by ReadLocal when gatevisor serve has never run.
var ErrNoLocal = errors.New("no fleet here: start `gatevisor serve` (it embeds the fleet's NATS server) or give --nats nats://HOST:PORT")

// ReadLocal reads dir/LocalFile.
func ReadLocal(dir string) (Local, error) {
	p := filepath.Join(dir, LocalFile)
	f, err := safefile.OpenFile(p, os.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return Local{}, ErrNoLocal
	}
	if err != nil {
		return Local{}, fmt.Errorf("fleet: %w", err)
	}
	defer f.Close()
	b := make([]byte, 64<<10)
	n, _ := f.Read(b)
	var l Local
	if err := json.Unmarshal(b[:n], &l); err != nil || l.URL == "" {
		return Local{}, fmt.Errorf("fleet: %s is not a fleet address file (%v): remove it and restart gatevisor serve", p, err)
	}
	return l, nil
}
