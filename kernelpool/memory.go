package kernelpool

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// DefaultKernelMemory is what the pool assumes a ready kernel costs until
// it has measured one of its kernelspec: a cold ipykernel is about 52 MiB.
const DefaultKernelMemory = 64 << 20

// processTree lists pid and its descendants, parents first.
func processTree(pid int) []int {
	tree := []int{pid}
	for i := 0; i < len(tree) && len(tree) < 1024; i++ {
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", tree[i]))
		for _, t := range tasks {
			data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", tree[i], t.Name()))
			if err != nil {
				continue
			}
			for _, f := range strings.Fields(string(data)) {
				if child, err := strconv.Atoi(f); err == nil {
					tree = append(tree, child)
				}
			}
		}
	}
	return tree
}

// treePSS is the proportional set size of pid and its descendants: what
// they cost the machine, with the pages they share divided among their
// sharers.
func treePSS(pid int) (int64, error) {
	var total int64
	for _, p := range processTree(pid) {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", p))
		if err != nil {
			if p == pid {
				return 0, fmt.Errorf("kernel memory: %w", err)
			}
			continue // ended meanwhile
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), "Pss:"); ok {
				f := strings.Fields(rest)
				if kib, err := strconv.ParseInt(f[0], 10, 64); err == nil {
					total += kib << 10
				}
				break
			}
		}
	}
	return total, nil
}
