package storage

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
)

// Cmd is one host command, kept as data so tests can check the exact
// argument lists and tables. It never goes through a shell.
type Cmd struct {
	Name  string
	Args  []string
	Stdin string // fed to the command (dmsetup reads its table here)
}

func (c Cmd) String() string { return strings.Join(append([]string{c.Name}, c.Args...), " ") }

// Runner runs a command and returns its stdout.
type Runner func(ctx context.Context, c Cmd) ([]byte, error)

// Options are shared by every backend.
type Options struct {
	Log *slog.Logger
	// Run runs host commands; nil runs them for real (exec, no shell).
	Run Runner
	// DMControl is device-mapper's control node; empty means
	// /dev/mapper/control.
	DMControl string
	// CacheDir keeps qcow2's grown image layers (one per image and disk
	// size); empty grows every VM's overlay itself. The daemon passes a
	// directory of its state dir, e.g. <state>/cache/disks.
	CacheDir string
}

func (o Options) dmControl() string {
	if o.DMControl == "" {
		return "/dev/mapper/control"
	}
	return o.DMControl
}

func (o Options) log() *slog.Logger {
	if o.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Log
}

func (o Options) run(ctx context.Context, c Cmd) ([]byte, error) {
	if o.Run != nil {
		return o.Run(ctx, c)
	}
	return ExecRunner(ctx, c)
}

// ExecRunner runs c with exec; the error carries stderr.
func ExecRunner(ctx context.Context, c Cmd) ([]byte, error) {
	cmd := exec.CommandContext(ctx, c.Name, c.Args...)
	if c.Stdin != "" {
		cmd.Stdin = strings.NewReader(c.Stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s: %w: %s", c, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}
