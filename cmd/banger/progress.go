package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"

	"github.com/banger-vm/banger/api"
)

// stageProgress shows the stages of a long operation: a live display on a
// terminal, plain lines otherwise (logs, CI).
type stageProgress interface {
	Event(ev api.BuildEvent)
	// Finish ends the display; ok=false marks unfinished stages aborted.
	Finish(ok bool)
}

func newStageProgress(w io.Writer) stageProgress {
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return newBarProgress(f)
	}
	return &lineProgress{w: w, start: time.Now(), last: map[string]time.Time{}}
}

// lineProgress prints one line per stage change, and progress at most
// every few seconds per stage.
type lineProgress struct {
	w     io.Writer
	start time.Time
	last  map[string]time.Time
}

func (p *lineProgress) Event(ev api.BuildEvent) {
	if ev.Status == "progress" && time.Since(p.last[ev.Stage]) < 3*time.Second {
		return
	}
	p.last[ev.Stage] = time.Now()
	line := fmt.Sprintf("[%6.1fs] %s: %s", time.Since(p.start).Seconds(), ev.Stage, ev.Status)
	if ev.Total > 0 {
		line += fmt.Sprintf(" %d/%d", ev.Done, ev.Total)
	}
	if ev.Detail != "" {
		line += " " + ev.Detail
	}
	fmt.Fprintln(p.w, line)
}

func (p *lineProgress) Finish(bool) {}

// barProgress draws a bar (or a spinner when the size is unknown) per stage.
type barProgress struct {
	p      *mpb.Progress
	mu     sync.Mutex
	bars   map[string]*mpb.Bar
	detail map[string]string
}

func newBarProgress(w io.Writer) *barProgress {
	return &barProgress{p: mpb.New(mpb.WithOutput(w), mpb.WithWidth(30)), bars: map[string]*mpb.Bar{}, detail: map[string]string{}}
}

func (b *barProgress) bar(stage string) *mpb.Bar {
	if bar, ok := b.bars[stage]; ok {
		return bar
	}
	bar := b.p.AddSpinner(0,
		mpb.PrependDecorators(decor.Name(stage, decor.WC{W: 12, C: decor.DindentRight}),
			decor.OnComplete(decor.Elapsed(decor.ET_STYLE_GO, decor.WC{W: 6}), "done")),
		mpb.AppendDecorators(decor.Any(func(decor.Statistics) string {
			b.mu.Lock()
			defer b.mu.Unlock()
			return b.detail[stage]
		})),
	)
	b.bars[stage] = bar
	return bar
}

func (b *barProgress) Event(ev api.BuildEvent) {
	b.mu.Lock()
	if ev.Detail != "" {
		b.detail[ev.Stage] = ev.Detail
	}
	b.mu.Unlock()
	bar := b.bar(ev.Stage)
	switch {
	case ev.Status == "done":
		bar.SetTotal(-1, true)
	case ev.Total > 0:
		bar.SetTotal(ev.Total, false)
		bar.SetCurrent(ev.Done)
	}
}

func (b *barProgress) Finish(ok bool) {
	for _, bar := range b.bars {
		if !bar.Completed() {
			if ok {
				bar.SetTotal(-1, true)
			} else {
				bar.Abort(false)
			}
		}
	}
	b.p.Wait()
}
