// Package build makes banger's default guest image from Debian's own
// packages: a root filesystem made with mmdebstrap, the kernel of a Debian
// kernel package as a bzImage (QEMU) and an ELF vmlinux (Firecracker), an
// initramfs made by internal/image/initramfs, and an ext4 image of the root.
//
// Build runs as root. A build that fails or is cancelled leaves no
// temporary directory, no mount, no process and nothing in outDir.
package build

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/banger-vm/banger/errdefs"
)

// Stages, in the order Build runs them.
const (
	StagePackages   = "packages"   // mmdebstrap: Debian root with the packages, customised
	StageKernel     = "kernel"     // vmlinuz and vmlinux out of the root's /boot
	StageInitramfs  = "initramfs"  // banger's initramfs with the virtio and ext4 modules
	StageFilesystem = "filesystem" // mkfs.ext4 -d of the root
	StageFinish     = "finish"     // checksums, manifest, artifacts into outDir
)

// Event statuses.
const (
	StatusStart    = "start"
	StatusProgress = "progress"
	StatusDone     = "done"
)

// Event reports progress. Done and Total count what the stage counts
// (bytes, steps); Total 0 means unknown.
type Event struct {
	Stage  string `json:"stage"`
	Status string `json:"status"`
	Detail string `json:"detail,omitempty"`
	Done   int64  `json:"done,omitempty"`
	Total  int64  `json:"total,omitempty"`
}

// workPrefix names Build's temporary directories under Spec.WorkDir.
const workPrefix = "banger-image-build-"

// builder is one build in progress.
type builder struct {
	spec     Spec
	outDir   string
	work     string // temporary directory, removed at the end
	root     string // work/root: the image's root filesystem tree
	out      string // work/out: artifacts before they move to outDir
	busybox  string
	progress func(Event)
	log      *slog.Logger
	stages   []stage

	started       time.Time
	kernelVersion string // uname -r
	manifest      *Manifest
}

type stage struct {
	name string
	run  func(b *builder, ctx context.Context) error
}

// Builder builds images. New makes one; its test seams (the stages and
// the host check) are fields, not package globals.
type Builder struct {
	log *slog.Logger
	// stages is the build, in order.
	stages []stage
	// preflight checks the host before any work and returns busybox's path.
	preflight func(spec Spec, outDir string) (busybox string, err error)
}

// New returns a builder that logs to log (its warnings belong in the
// daemon's log); nil discards them.
func New(log *slog.Logger) *Builder {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Builder{
		log: log,
		stages: []stage{
			{StagePackages, (*builder).packages},
			{StageKernel, (*builder).kernel},
			{StageInitramfs, (*builder).initramfs},
			{StageFilesystem, (*builder).filesystem},
			{StageFinish, (*builder).finish},
		},
		preflight: checkHost,
	}
}

// Build builds the image spec describes into outDir (created if missing;
// it must not hold the artifacts already) and returns its manifest, also
// written to outDir/manifest.json. progress (optional) receives the stages'
// events, from this goroutine.
//
// On error or cancellation the temporary work directory is removed (after
// checking that no mount is left under it), no process of the build is
// left, and outDir holds none of the build's files: Build removes outDir
// itself if it created it, and only its own files otherwise.
func (bd *Builder) Build(ctx context.Context, spec Spec, outDir string, progress func(Event)) (*Manifest, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	spec = spec.WithDefaults()
	if spec.WorkDir == "" {
		spec.WorkDir = os.TempDir()
	}
	if progress == nil {
		progress = func(Event) {}
	}
	outDir, err := filepath.Abs(outDir)
	if err != nil {
		return nil, errdefs.InvalidArgument("output dir %q: %w", outDir, err)
	}
	for _, name := range append(ArtifactNames, ManifestFile) {
		if _, err := os.Lstat(filepath.Join(outDir, name)); err == nil {
			return nil, errdefs.AlreadyExists("output dir %s already holds %s", outDir, name)
		}
	}
	b := &builder{spec: spec, outDir: outDir, progress: progress, log: bd.log.With("op", "image.build"), stages: bd.stages}
	if b.busybox, err = bd.preflight(spec, outDir); err != nil {
		return nil, err
	}
	return b.build(ctx)
}

func (b *builder) build(ctx context.Context) (m *Manifest, err error) {
	started := time.Now()
	b.started = started
	if err := os.MkdirAll(b.spec.WorkDir, 0o755); err != nil {
		return nil, fmt.Errorf("image build: work dir: %w", err)
	}
	b.work, err = os.MkdirTemp(b.spec.WorkDir, workPrefix)
	if err != nil {
		return nil, fmt.Errorf("image build: %w", err)
	}
	// apt drops privileges to _apt: the tree must be traversable.
	if err := os.Chmod(b.work, 0o755); err != nil {
		return nil, errors.Join(fmt.Errorf("image build: %w", err), removeWorkDir(b.work))
	}
	b.root = filepath.Join(b.work, "root")
	b.out = filepath.Join(b.work, "out")
	createdOut := false
	if _, err := os.Stat(b.outDir); errors.Is(err, fs.ErrNotExist) {
		createdOut = true
	}
	defer func() {
		if err == nil {
			err = removeWorkDir(b.work)
			if err != nil {
				m = nil
			}
		}
		if err != nil {
			// Cleanup runs even when ctx is cancelled: it needs no ctx.
			err = errors.Join(err, removeWorkDir(b.work), b.removeOutputs(createdOut))
		}
	}()
	for _, d := range []string{b.root, b.out} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return nil, fmt.Errorf("image build: %w", err)
		}
	}
	b.manifest = &Manifest{
		FormatVersion: ManifestVersion,
		Release:       b.spec.Release,
		Mirror:        b.spec.Mirror,
		KernelPackage: b.spec.KernelPackage,
		ExtraPackages: b.spec.Packages,
		Recipe:        Recipe(),
		SizeBytes:     b.spec.SizeBytes,
		BuiltAt:       started.UTC().Truncate(time.Second),
		KernelCmdline: KernelCmdline,
	}
	for _, st := range b.stages {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("image build cancelled before stage %s: %w", st.name, err)
		}
		t := time.Now()
		b.progress(Event{Stage: st.name, Status: StatusStart})
		if err := st.run(b, ctx); err != nil {
			return nil, fmt.Errorf("image build: stage %s: %w", st.name, err)
		}
		took := time.Since(t).Round(10 * time.Millisecond)
		b.log.Debug("image build stage done", "stage", st.name, "took", took)
		b.progress(Event{Stage: st.name, Status: StatusDone, Detail: took.String()})
	}
	return b.manifest, nil
}

// removeOutputs removes what the build put into outDir: the directory
// itself if the build created it, else the artifact and manifest files.
func (b *builder) removeOutputs(createdOut bool) error {
	if createdOut {
		if err := os.RemoveAll(b.outDir); err != nil {
			return fmt.Errorf("remove output dir: %w", err)
		}
		return nil
	}
	var errs []error
	for _, name := range append(ArtifactNames, ManifestFile) {
		if err := os.Remove(filepath.Join(b.outDir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// mountsUnder lists the mount points at or below dir in this process's
// mount namespace.
func mountsUnder(dir string) ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out []string
	for line := range strings.Lines(string(data)) {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMountinfo(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out, nil
}

// unescapeMountinfo undoes the kernel's octal escapes (\040 for a space).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for _, c := range s[i+1 : i+4] {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + byte(c-'0')
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// removeWorkDir removes the build's temporary directory, but never
// through a mount: if anything is still mounted below it, it is left in
// place and the error names the mounts.
func removeWorkDir(dir string) error {
	if dir == "" {
		return nil
	}
	mounts, err := mountsUnder(dir)
	if err != nil {
		return fmt.Errorf("check mounts before removing %s: %w", dir, err)
	}
	if len(mounts) > 0 {
		return fmt.Errorf("not removing %s: still mounted below it: %s (hint: umount them, then remove it)",
			dir, strings.Join(mounts, ", "))
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove work dir: %w", err)
	}
	return nil
}

// noSpace turns a full disk into a clear error.
func noSpace(err error, dir string, need int64) error {
	var ce *commandError
	if errors.Is(err, syscall.ENOSPC) || errors.As(err, &ce) && ce.hasLine("No space left on device") {
		return errdefs.FailedPrecondition("no space left in %s: need about %s (hint: free some space or point the work dir elsewhere): %w",
			dir, humanize.IBytes(uint64(need)), err)
	}
	return err
}

// freeBytes is the space available to root in the filesystem holding dir
// (or its nearest existing parent).
func freeBytes(dir string) (int64, error) {
	for {
		var st syscall.Statfs_t
		err := syscall.Statfs(dir, &st)
		if err == nil {
			return int64(st.Bfree) * st.Bsize, nil
		}
		if !errors.Is(err, syscall.ENOENT) || dir == filepath.Dir(dir) {
			return 0, err
		}
		dir = filepath.Dir(dir)
	}
}
