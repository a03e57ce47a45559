package model

import (
	"fmt"
	"io"
	"strings"
)

// progress draws a one-line text bar, redrawn in place with '\r' each time
// the percentage changes.
type progress struct {
	w           io.Writer
	label       string
	total, done int64
	lastPct     int
}

const barWidth = 30

func newProgress(w io.Writer, label string, total int64) *progress {
	p := &progress{w: w, label: label, total: total, lastPct: -1}
	p.draw()
	return p
}

func (p *progress) add(n int64) {
	p.done += n
	p.draw()
}

func (p *progress) draw() {
	pct := 100
	if p.total > 0 {
		pct = int(p.done * 100 / p.total)
	}
	if pct == p.lastPct {
		return
	}
	p.lastPct = pct
	fill := pct * barWidth / 100
	// A progress bar is best effort: a failed write to the terminal must
	// not fail the load.
	_, _ = fmt.Fprintf(p.w, "\r%s [%s%s] %3d%% %s / %s", p.label, strings.Repeat("=", fill), strings.Repeat(" ", barWidth-fill),
		pct, humanBytes(p.done), humanBytes(p.total))
}

func (p *progress) finish() {
	p.done = p.total
	p.draw()
	_, _ = fmt.Fprintln(p.w)
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
