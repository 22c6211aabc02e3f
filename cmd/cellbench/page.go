package main

import (
	"context"
	"fmt"
	"net/url"
	"sync"
	"time"
)

const (
	// pageCells is the cells of the common Sage-cell textbook page that
	// evaluate on load (issue 10).
	pageCells = 10
	// pages is how many such pages the page phase opens per kind.
	pages      = 5
	pageCode   = "print(1+1)"
	pageTarget = "≤ 1.5 s (issue 10)"
)

// cellLoad is one cell of a page: its one-shot session, from POST /kernel
// until the execute_reply, and the cleanup left for after the page.
type cellLoad struct {
	took    time.Duration
	replyAt time.Time
	cleanup func() error
}

// openCell is a cell that evaluates on load: POST /kernel (a one-shot
// session), the Sage-cell websocket, pageCode until its reply. Closing the
// websocket and deleting the kernel are left to cleanup, as a browser
// does not wait for them before the next cell.
func (e *env) openCell(ctx context.Context, from string) (cellLoad, error) {
	t0 := time.Now()
	k, _, err := e.api.newKernel(ctx, url.Values{"timeout": {"0"}}, from)
	if err != nil {
		return cellLoad{}, err
	}
	c := cellLoad{cleanup: func() error { return e.api.deleteKernel(k.ID) }}
	ws, err := sageChannels(ctx, k)
	if err != nil {
		return c, err
	}
	c.cleanup = func() error {
		ws.close()
		return e.api.deleteKernel(k.ID)
	}
	t, err := execute(ctx, ws, pageCode, false)
	if err != nil {
		return c, err
	}
	if t.stdout != "2\n" {
		return c, fmt.Errorf("%s printed %q", pageCode, t.stdout)
	}
	c.took, c.replyAt = t.replyAt.Sub(t0), t.replyAt
	return c, nil
}

// openPage opens the pageCells cells of one page, one after another or all
// at once, and returns the time until the last reply and each cell's own.
// Each cell comes from its own reader address: the sessions of a page stay
// open until it ends, and the per-address cap (a quarter of --max-kernels)
// would refuse a page's fifth.
func (e *env) openPage(ctx context.Context, group int, concurrent bool) (time.Duration, []time.Duration, error) {
	var (
		mu       sync.Mutex
		cells    []cellLoad
		firstErr error
		wg       sync.WaitGroup
	)
	began := time.Now()
	open := func(i int) {
		c, err := e.openCell(ctx, reader(group, i))
		mu.Lock()
		defer mu.Unlock()
		if c.cleanup != nil {
			cells = append(cells, c)
		}
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("cell %d: %w", i, err)
		}
	}
	for i := range pageCells {
		if !concurrent {
			open(i)
			if firstErr != nil {
				break
			}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			open(i)
		}()
	}
	wg.Wait()
	var last time.Time
	var each []time.Duration
	for _, c := range cells {
		if c.replyAt.After(last) {
			last = c.replyAt
		}
		each = append(each, c.took)
		if err := c.cleanup(); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return last.Sub(began), each, firstErr
}

// phasePage opens the common Sage-cell textbook page, pageCells cells that
// evaluate on load, pages times one cell after another and pages times
// with all its cells at once, each page on a full pool.
func (e *env) phasePage(ctx context.Context) error {
	for _, kind := range []struct {
		key, label string
		concurrent bool
		group      int
	}{{"sequential", "one after another", false, 300}, {"concurrent", "all at once", true, 310}} {
		var totals, cells []float64
		for p := range pages {
			if _, err := e.api.waitPoolFull(2 * time.Minute); err != nil {
				return err
			}
			total, each, err := e.openPage(ctx, kind.group+p, kind.concurrent)
			if err != nil {
				return fmt.Errorf("page %d (%s): %w", p, kind.key, err)
			}
			totals = append(totals, ms(total))
			cells = append(cells, durationsMS(each)...)
		}
		e.rec.dist(secSession, "page_"+kind.key, fmt.Sprintf("a page of %d cells evaluating %s on load, %s: all replies after",
			pageCells, pageCode, kind.label), "ms", totals, pageTarget,
			fmt.Sprintf("%d pages, each on a full pool (--pool %s); each cell a one-shot POST /kernel + websocket from its own address", pages, e.opts.pool))
		e.rec.dist(secSession, "page_"+kind.key+"_cell", "  each cell: POST /kernel → execute_reply", "ms", cells, "", "")
	}
	return nil
}
