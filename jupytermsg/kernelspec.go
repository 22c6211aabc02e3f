package jupytermsg

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// KernelSpec is the content of a kernel.json.
type KernelSpec struct {
	Argv          []string          `json:"argv"`
	DisplayName   string            `json:"display_name"`
	Language      string            `json:"language"`
	InterruptMode string            `json:"interrupt_mode,omitempty"`
	Env           map[string]string `json:"env,omitempty"`
	Metadata      json.RawMessage   `json:"metadata,omitempty"`
}

// Spec is an installed kernelspec: its name, directory and kernel.json.
type Spec struct {
	Name string
	Dir  string
	KernelSpec
}

// maxKernelJSON bounds what ParseKernelSpec accepts.
const maxKernelJSON = 1 << 20

// ParseKernelSpec decodes and validates a kernel.json.
func ParseKernelSpec(data []byte) (KernelSpec, error) {
	var k KernelSpec
	if len(data) > maxKernelJSON {
		return k, fmt.Errorf("kernel.json: %d bytes, over the %d limit", len(data), maxKernelJSON)
	}
	if err := json.Unmarshal(data, &k); err != nil {
		return k, fmt.Errorf("kernel.json: %w", err)
	}
	if len(k.Argv) == 0 {
		return k, errors.New("kernel.json: empty argv")
	}
	switch k.InterruptMode {
	case "", "signal", "message":
	default:
		return k, fmt.Errorf("kernel.json: unknown interrupt_mode %q", k.InterruptMode)
	}
	return k, nil
}

// InterruptByMessage reports whether interrupts go over the control channel.
func (k KernelSpec) InterruptByMessage() bool {
	return k.InterruptMode == "message"
}

// Command returns argv with {connection_file} and {resource_dir} substituted.
func (s Spec) Command(connectionFile string) []string {
	r := strings.NewReplacer("{connection_file}", connectionFile, "{resource_dir}", s.Dir)
	argv := make([]string, len(s.Argv))
	for i, a := range s.Argv {
		argv[i] = r.Replace(a)
	}
	return argv
}

// KernelSpecDirs lists the directories searched for kernelspecs, highest
// priority first, as jupyter_client orders them: JUPYTER_PATH entries, the
// user's data dir, then the system dirs.
func KernelSpecDirs(env func(string) string) []string {
	var dirs []string
	for _, p := range filepath.SplitList(env("JUPYTER_PATH")) {
		if p != "" {
			dirs = append(dirs, filepath.Join(p, "kernels"))
		}
	}
	if d := env("JUPYTER_DATA_DIR"); d != "" {
		dirs = append(dirs, filepath.Join(d, "kernels"))
	} else if xdg := env("XDG_DATA_HOME"); xdg != "" {
		dirs = append(dirs, filepath.Join(xdg, "jupyter", "kernels"))
	} else if home := env("HOME"); home != "" {
		dirs = append(dirs, filepath.Join(home, ".local", "share", "jupyter", "kernels"))
	}
	return append(dirs, "/usr/local/share/jupyter/kernels", "/usr/share/jupyter/kernels")
}

// FindKernelSpecs reads every kernelspec under dirs. The first directory
// that has a name wins. Unreadable or invalid specs are skipped and reported
// in the returned error list, so one broken install does not hide the rest.
func FindKernelSpecs(dirs []string) (map[string]Spec, []error) {
	specs := map[string]Spec{}
	var problems []error
	for _, dir := range dirs {
		entries, err := os.ReadDir(dir)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				problems = append(problems, fmt.Errorf("kernelspec dir %s: %w", dir, err))
			}
			continue
		}
		for _, e := range entries {
			name := strings.ToLower(e.Name())
			if _, seen := specs[name]; seen {
				continue
			}
			specDir := filepath.Join(dir, e.Name())
			data, err := os.ReadFile(filepath.Join(specDir, "kernel.json"))
			if err != nil {
				if !errors.Is(err, fs.ErrNotExist) {
					problems = append(problems, fmt.Errorf("kernelspec %s: %w", specDir, err))
				}
				continue
			}
			k, err := ParseKernelSpec(data)
			if err != nil {
				problems = append(problems, fmt.Errorf("kernelspec %s: %w", specDir, err))
				continue
			}
			specs[name] = Spec{Name: name, Dir: specDir, KernelSpec: k}
		}
	}
	return specs, problems
}

// SortedNames returns the spec names in order.
func SortedNames(specs map[string]Spec) []string {
	names := make([]string, 0, len(specs))
	for n := range specs {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
