package cpu

import "sync"

// workers is a small persistent pool of goroutines that run the parts of a
// parallel loop. The calling goroutine runs part 0 itself.
type workers struct {
	n     int
	tasks chan task
	once  sync.Once
}

type task struct {
	fn     func(part, lo, hi int)
	part   int
	lo, hi int
	wg     *sync.WaitGroup
}

func newWorkers(n int) *workers {
	p := &workers{n: n, tasks: make(chan task, n)}
	for i := 1; i < n; i++ {
		go func() {
			for t := range p.tasks {
				t.fn(t.part, t.lo, t.hi)
				t.wg.Done()
			}
		}()
	}
	return p
}

// run splits [0, n) into at most p.n contiguous parts and calls fn on each,
// in parallel; part is a dense index below p.n, unique within the call, for
// per-part scratch buffers. It returns when every part is done.
func (p *workers) run(n int, fn func(part, lo, hi int)) {
	if n <= 0 {
		return
	}
	parts := min(p.n, n)
	if parts == 1 {
		fn(0, 0, n)
		return
	}
	var wg sync.WaitGroup
	wg.Add(parts - 1)
	for i := 1; i < parts; i++ {
		p.tasks <- task{fn: fn, part: i, lo: i * n / parts, hi: (i + 1) * n / parts, wg: &wg}
	}
	fn(0, 0, n/parts)
	wg.Wait()
}

// close stops the goroutines; run must not be called afterwards.
func (p *workers) close() {
	p.once.Do(func() { close(p.tasks) })
}
