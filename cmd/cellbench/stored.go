package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

const secStored = "Shared links: a permalink opened with its stored result vs re-running its code (same run)"

// storedCell is a shared cell as readers open it: code that prints and
// plots.
type storedCell struct {
	kernel, code string
	reruns       int
}

// phaseStored times a reader opening a shared link (/?q=ID): with the
// stored result (the page and GET /permalink/ID, no kernel) and by
// re-running the code (the page, the permalink, POST /kernel, the
// websocket and the execution until idle), in python3 and, when
// installed, SageMath; and what a stored result costs.
func (e *env) phaseStored(ctx context.Context) error {
	cells := []storedCell{{
		kernel: "python3",
		code:   "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2, 4])\nplt.show()\nprint('sum', sum(range(10)))",
		reruns: 8,
	}}
	var specs struct {
		Kernels []struct {
			Name string `json:"name"`
		} `json:"kernels"`
	}
	if _, err := getJSON(e.api.http, e.api.base+"kernelspecs", nil, &specs); err == nil {
		for _, k := range specs.Kernels {
			if k.Name == "sagemath" {
				cells = append(cells, storedCell{kernel: "sagemath", code: "show(plot(sin(x), (x, 0, 6)))\nprint(integrate(x^2, x))", reruns: 3})
			}
		}
	}
	for _, cell := range cells {
		if err := e.storedVsRerun(ctx, cell); err != nil {
			return fmt.Errorf("%s: %w", cell.kernel, err)
		}
	}
	return nil
}

func (e *env) storedVsRerun(ctx context.Context, cell storedCell) error {
	form := url.Values{"kernel_name": {cell.kernel}, "timeout": {"120"}}
	run := func() (executeTiming, error) {
		k, _, err := e.api.newKernel(ctx, form, reader(40, 1))
		if err != nil {
			return executeTiming{}, err
		}
		defer e.api.deleteKernel(k.ID)
		ws, err := sageChannels(ctx, k)
		if err != nil {
			return executeTiming{}, err
		}
		defer ws.close()
		return execute(ctx, ws, cell.code, false)
	}
	first, err := run()
	if err != nil {
		return err
	}
	id := first.permalink
	if id == "" {
		return fmt.Errorf("the execute_reply carried no permalink")
	}
	var size int
	deadline := time.Now().Add(time.Minute)
	for {
		n, status, err := e.fetchBytes(e.api.base + "permalink/" + id + "/outputs")
		if err == nil && status == http.StatusOK {
			size = n
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no result stored with permalink %s after a minute (HTTP %d, %v)", id, status, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	open := func() error {
		for _, path := range []string{"?q=" + id, "permalink/" + id} {
			if _, status, err := e.fetchBytes(e.api.base + path); err != nil || status != http.StatusOK {
				return fmt.Errorf("GET /%s: HTTP %d: %v", path, status, err)
			}
		}
		return nil
	}
	var stored, rerun []float64
	for i := 0; i < 30; i++ {
		t := time.Now()
		if err := open(); err != nil {
			return err
		}
		stored = append(stored, ms(time.Since(t)))
	}
	for i := 0; i < cell.reruns; i++ {
		t := time.Now()
		if err := open(); err != nil {
			return err
		}
		if _, err := run(); err != nil {
			return err
		}
		rerun = append(rerun, ms(time.Since(t)))
	}
	s := e.rec.dist(secStored, "stored_open_"+cell.kernel, fmt.Sprintf("/?q= with its stored result (%s): page + GET /permalink/ID, no kernel", cell.kernel), "ms", stored, "",
		"what the page needs before it paints the result")
	r := e.rec.dist(secStored, "rerun_open_"+cell.kernel, fmt.Sprintf("/?q= re-running the code (%s): page + permalink + POST /kernel + websocket + execution until idle", cell.kernel), "ms", rerun, "",
		"what every reader waited for before stored results")
	if s.p50 > 0 {
		e.rec.value(secStored, "stored_speedup_"+cell.kernel, fmt.Sprintf("re-run p50 / stored p50 (%s)", cell.kernel), "×", round(r.p50/s.p50), "", "same run, side by side")
	}
	e.rec.value(secStored, "stored_bytes_"+cell.kernel, fmt.Sprintf("stored result of a plot and a line of text (%s)", cell.kernel), "KiB", round(float64(size)/1024), "",
		"inline in the database, once per identical result; budget --result-max-kb")
	return nil
}

// fetchBytes GETs u and returns the body's size and the status.
func (e *env) fetchBytes(u string) (int, int, error) {
	resp, err := e.api.http.Get(u)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	return int(n), resp.StatusCode, err
}
