package initramfs

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/banger-vm/banger/errdefs"
)

// Deps is the content of a kernel's modules.dep: each module file (a path
// relative to /lib/modules/<kver>, e.g. "kernel/drivers/block/virtio_blk.ko")
// maps to the module files it depends on, as listed.
type Deps map[string][]string

// Builtin is the set of module names (normalised, see NormalizeName) that are
// compiled into the kernel, from modules.builtin.
type Builtin map[string]bool

// moduleSuffixes are the file endings a module may have, longest first.
var moduleSuffixes = []string{".ko.xz", ".ko.zst", ".ko.gz", ".ko"}

// NormalizeName returns the canonical form of a module name: modprobe treats
// '-' and '_' as the same character, so banger spells them all '_'.
func NormalizeName(name string) string {
	return strings.ReplaceAll(name, "-", "_")
}

// ModuleName returns the normalised module name of a module file path:
// "kernel/drivers/char/hw_random/virtio-rng.ko.xz" gives "virtio_rng".
// ok is false when the path does not end in a module suffix.
func ModuleName(p string) (name string, ok bool) {
	base := path.Base(p)
	for _, s := range moduleSuffixes {
		if n, found := strings.CutSuffix(base, s); found && n != "" {
			return NormalizeName(n), true
		}
	}
	return "", false
}

// checkModulePath rejects paths that could escape /lib/modules/<kver> or that
// do not name a module file.
func checkModulePath(p string) error {
	if p == "" || path.IsAbs(p) || path.Clean(p) != p || p == ".." || strings.HasPrefix(p, "../") {
		return fmt.Errorf("module path %q must be relative and clean: %w", p, errdefs.ErrInvalidArgument)
	}
	if _, ok := ModuleName(p); !ok {
		return fmt.Errorf("module path %q does not end in .ko, .ko.xz, .ko.zst or .ko.gz: %w", p, errdefs.ErrInvalidArgument)
	}
	return nil
}

// ParseModulesDep parses the modules.dep format written by depmod:
//
//	kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
//
// Blank lines and lines starting with '#' are ignored.
func ParseModulesDep(r io.Reader) (Deps, error) {
	deps := Deps{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for lineNo := 1; sc.Scan(); lineNo++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, rest, found := strings.Cut(line, ":")
		if !found {
			return nil, fmt.Errorf("modules.dep line %d: missing ':': %w", lineNo, errdefs.ErrInvalidArgument)
		}
		key = strings.TrimSpace(key)
		if err := checkModulePath(key); err != nil {
			return nil, fmt.Errorf("modules.dep line %d: %w", lineNo, err)
		}
		if _, dup := deps[key]; dup {
			return nil, fmt.Errorf("modules.dep line %d: %q listed twice: %w", lineNo, key, errdefs.ErrInvalidArgument)
		}
		list := strings.Fields(rest)
		for _, d := range list {
			if err := checkModulePath(d); err != nil {
				return nil, fmt.Errorf("modules.dep line %d: %w", lineNo, err)
			}
		}
		if list == nil {
			list = []string{}
		}
		deps[key] = list
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read modules.dep: %w", err)
	}
	return deps, nil
}

// ParseModulesBuiltin parses modules.builtin: one module path per line, for
// modules compiled into the kernel ("kernel/fs/ext4/ext4.ko").
func ParseModulesBuiltin(r io.Reader) (Builtin, error) {
	b := Builtin{}
	sc := bufio.NewScanner(r)
	for lineNo := 1; sc.Scan(); lineNo++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, ok := ModuleName(line)
		if !ok {
			return nil, fmt.Errorf("modules.builtin line %d: %q is not a module path: %w", lineNo, line, errdefs.ErrInvalidArgument)
		}
		b[name] = true
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read modules.builtin: %w", err)
	}
	return b, nil
}

// Resolve returns the module files needed to load the wanted modules, in an
// order that loads every dependency before its user, each file once.
// Names are module names ("virtio_blk", "virtio-blk" is the same); a name in
// builtin is compiled into the kernel and is skipped; a name found in neither
// deps nor builtin is an ErrNotFound error naming it.
//
// The order is deterministic: for each wanted name in the order given, its
// dependencies come first (depth first, in the order modules.dep lists them),
// then the module itself.
func Resolve(deps Deps, builtin Builtin, names ...string) ([]string, error) {
	byName := make(map[string][]string, len(deps))
	for p := range deps {
		n, _ := ModuleName(p)
		byName[n] = append(byName[n], p)
	}

	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var order []string
	var visit func(p string, chain []string) error
	visit = func(p string, chain []string) error {
		switch state[p] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("modules.dep has a dependency cycle: %s -> %s: %w",
				strings.Join(chain, " -> "), p, errdefs.ErrInvalidArgument)
		}
		list, ok := deps[p]
		if !ok {
			return fmt.Errorf("module %q (needed by %s) has no entry in modules.dep: %w",
				p, strings.Join(chain, " -> "), errdefs.ErrNotFound)
		}
		state[p] = visiting
		for _, d := range list {
			if err := visit(d, append(chain, p)); err != nil {
				return err
			}
		}
		state[p] = done
		order = append(order, p)
		return nil
	}

	for _, raw := range names {
		name := NormalizeName(strings.TrimSpace(raw))
		if name == "" {
			return nil, fmt.Errorf("empty module name: %w", errdefs.ErrInvalidArgument)
		}
		if builtin[name] {
			continue
		}
		paths := byName[name]
		switch len(paths) {
		case 0:
			return nil, fmt.Errorf("kernel module %q: not in modules.dep nor modules.builtin (hint: check the name and the kernel version): %w",
				raw, errdefs.ErrNotFound)
		case 1:
		default:
			sort.Strings(paths)
			return nil, fmt.Errorf("kernel module %q is ambiguous in modules.dep: %s: %w",
				raw, strings.Join(paths, ", "), errdefs.ErrInvalidArgument)
		}
		if err := visit(paths[0], nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// LoadIndex reads modules.dep and modules.builtin from a kernel's
// /lib/modules/<version> directory.
func LoadIndex(modDir string) (Deps, Builtin, error) {
	f, err := os.Open(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	deps, err := ParseModulesDep(f)
	if err != nil {
		return nil, nil, err
	}
	bf, err := os.Open(filepath.Join(modDir, "modules.builtin"))
	if err != nil {
		return nil, nil, err
	}
	defer bf.Close()
	builtin, err := ParseModulesBuiltin(bf)
	return deps, builtin, err
}
