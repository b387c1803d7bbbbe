package daemon

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
)

type stageLog struct {
	mu     sync.Mutex
	stages []string
}

func (l *stageLog) Stage(name, status, _ string) {
	l.mu.Lock()
	l.stages = append(l.stages, name+":"+status)
	l.mu.Unlock()
}

func TestRunStepsUndoesExactlyThePriorStepsInReverse(t *testing.T) {
	const n = 5
	for fail := 0; fail < n; fail++ {
		t.Run(fmt.Sprintf("fail-at-%d", fail), func(t *testing.T) {
			var done, undone []int
			boom := errors.New("boom")
			var steps []Step
			for i := 0; i < n; i++ {
				steps = append(steps, Step{
					Name: fmt.Sprintf("s%d", i),
					Do: func(context.Context) error {
						if i == fail {
							return boom
						}
						done = append(done, i)
						return nil
					},
					Undo: func(context.Context) error { undone = append(undone, i); return nil },
				})
			}
			obs := &stageLog{}
			err := RunSteps(context.Background(), steps, obs)
			if !errors.Is(err, boom) || !strings.Contains(err.Error(), fmt.Sprintf(`step "s%d"`, fail)) {
				t.Fatalf("error %v does not wrap the failure or name the step", err)
			}
			want := []int{}
			for i := fail - 1; i >= 0; i-- {
				want = append(want, i)
			}
			if !slices.Equal(undone, want) { // nil and empty are equal
				t.Fatalf("undone %v, want %v", undone, want)
			}
			if len(done) != fail {
				t.Fatalf("steps after the failure ran: %v", done)
			}
			if got := obs.stages[fail]; got != fmt.Sprintf("s%d:failed", fail) {
				t.Fatalf("stage log %v", obs.stages)
			}
		})
	}
}

func TestRunStepsJoinsUndoErrorsAndKeepsGoing(t *testing.T) {
	var undone []string
	u1, u2 := errors.New("undo one"), errors.New("undo two")
	boom := errors.New("boom")
	steps := []Step{
		{Name: "a", Do: func(context.Context) error { return nil }, Undo: func(context.Context) error { undone = append(undone, "a"); return u1 }},
		{Name: "b", Do: func(context.Context) error { return nil }}, // no undo
		{Name: "c", Do: func(context.Context) error { return nil }, Undo: func(context.Context) error { undone = append(undone, "c"); return u2 }},
		{Name: "d", Do: func(context.Context) error { return boom }},
	}
	obs := &stageLog{}
	err := RunSteps(context.Background(), steps, obs)
	var se *StepError
	if !errors.As(err, &se) || se.Step != "d" || !errors.Is(err, boom) || se.RolledBack() {
		t.Fatalf("err = %#v", err)
	}
	if len(se.UndoErrs) != 2 || !errors.Is(se.UndoErrs[0], u2) || !errors.Is(se.UndoErrs[1], u1) {
		t.Fatalf("undo errors %v", se.UndoErrs)
	}
	for _, want := range []string{"boom", "undo two", "undo one"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message %q lacks %q", err, want)
		}
	}
	if !slices.Equal(undone, []string{"c", "a"}) {
		t.Fatalf("undo order %v", undone)
	}
	if !slices.Equal(obs.stages, []string{"a:done", "b:done", "c:done", "d:failed", "c:undo-failed", "a:undo-failed"}) {
		t.Fatalf("stages %v", obs.stages)
	}
}

func TestRunStepsUndoesOnADetachedContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	undoCtxErr := errors.New("undo not run")
	steps := []Step{
		{Name: "a", Do: func(context.Context) error { return nil }, Undo: func(ctx context.Context) error { undoCtxErr = ctx.Err(); return nil }},
		{Name: "b", Do: func(context.Context) error { cancel(); return context.Canceled }},
		{Name: "c", Do: func(context.Context) error { t.Fatal("ran after cancel"); return nil }},
	}
	err := RunSteps(ctx, steps, &stageLog{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if undoCtxErr != nil {
		t.Fatalf("undo saw a cancelled context: %v", undoCtxErr)
	}
}

func TestRunStepsStopsBeforeNextStepWhenCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	undone := false
	steps := []Step{
		{Name: "a", Do: func(context.Context) error { cancel(); return nil }, Undo: func(context.Context) error { undone = true; return nil }},
		{Name: "b", Do: func(context.Context) error { t.Fatal("b ran on a cancelled context"); return nil }},
	}
	if err := RunSteps(ctx, steps, &stageLog{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if !undone {
		t.Fatal("a was not undone")
	}
}
