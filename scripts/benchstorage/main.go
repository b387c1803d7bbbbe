// Command benchstorage measures the create step of each root-disk strategy
// for images of several sizes, alternating with two baselines in the same
// run (`qemu-img create -b` on the ext4 dir, `cp --reflink=always` on the
// XFS dir), and the space a VM's disk costs right after create. Run it
// through scripts/bench-storage.sh, which makes the XFS.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/storage"
)

type method struct {
	name string
	dir  string // ext4 or xfs
	run  func(ctx context.Context, img, dst string, size int64) error
}

func main() {
	ext4 := flag.String("ext4", "", "directory on the state filesystem (ext4)")
	xfs := flag.String("xfs", "", "directory on an XFS made with reflink=1")
	sizes := flag.String("sizes", "1,4,16", "image sizes in GiB")
	rounds := flag.Int("rounds", 5, "alternating rounds")
	dataPerGiB := flag.Int64("data", 200, "MB of real data written per GiB of image")
	flag.Parse()
	if *ext4 == "" || *xfs == "" {
		fmt.Fprintln(os.Stderr, "usage: benchstorage -ext4 DIR -xfs DIR [-sizes 1,4,16] [-rounds 5]")
		os.Exit(2)
	}
	ctx := context.Background()
	backend := func(k storage.Kind) func(ctx context.Context, img, dst string, size int64) error {
		b, err := storage.New(k, storage.Options{})
		if err != nil {
			panic(err)
		}
		return func(ctx context.Context, img, dst string, size int64) error {
			return b.Create(ctx, storage.Disk{VMID: "bench0000", Image: img, Path: dst, Size: size})
		}
	}
	command := func(name string, args func(img, dst string, size int64) []string) func(ctx context.Context, img, dst string, size int64) error {
		return func(ctx context.Context, img, dst string, size int64) error {
			out, err := exec.CommandContext(ctx, name, args(img, dst, size)...).CombinedOutput()
			if err != nil {
				return fmt.Errorf("%s: %w: %s", name, err, out)
			}
			return nil
		}
	}
	cached, err := storage.New(storage.KindQCOW2, storage.Options{CacheDir: filepath.Join(*ext4, "cache")})
	if err != nil {
		panic(err)
	}
	qcow2Cached := func(ctx context.Context, img, dst string, size int64) error {
		return cached.Create(ctx, storage.Disk{VMID: "bench0000", Image: img, Path: dst, Size: size})
	}
	rcached, err := storage.New(storage.KindReflink, storage.Options{CacheDir: filepath.Join(*xfs, "cache")})
	if err != nil {
		panic(err)
	}
	reflinkCached := func(ctx context.Context, img, dst string, size int64) error {
		return rcached.Create(ctx, storage.Disk{VMID: "bench0000", Image: img, Path: dst, Size: size})
	}
	methods := []method{
		{"qcow2", *ext4, backend(storage.KindQCOW2)},
		{"qcow2, grown layer cached", *ext4, qcow2Cached},
		{"baseline qemu-img create -b", *ext4, command("qemu-img", func(img, dst string, size int64) []string {
			return []string{"create", "-q", "-f", "qcow2", "-F", "raw", "-b", img, dst, strconv.FormatInt(size, 10)}
		})},
		{"reflink", *xfs, backend(storage.KindReflink)},
		{"reflink, grown clone cached", *xfs, reflinkCached},
		{"baseline cp --reflink=always", *xfs, command("cp", func(img, dst string, _ int64) []string {
			return []string{"--reflink=always", img, dst}
		})},
		{"sparse-copy", *ext4, backend(storage.KindSparseCopy)},
	}
	fmt.Printf("# benchstorage %s, %d rounds, %d MB data per GiB\n", time.Now().UTC().Format(time.RFC3339), *rounds, *dataPerGiB)
	fmt.Println("# dm-snapshot: not measured (no device-mapper on this host); its create is a sparse truncate, its cost is at start")
	fmt.Println("# space per VM: on the XFS (reflink rows), the filesystem's free-space drop after syncfs (a reflink's shared")
	fmt.Println("# extents count in the file's blocks but cost nothing); on the ext4 state disk, the file's allocated blocks")
	fmt.Println("| strategy | image | grow to | create median | min | max | space per VM |")
	fmt.Println("|---|---|---|---|---|---|---|")
	for _, gs := range strings.Split(*sizes, ",") {
		gib, err := strconv.ParseInt(gs, 10, 64)
		if err != nil {
			panic(err)
		}
		size := gib << 30
		imgs := map[string]string{}
		for _, d := range []string{*ext4, *xfs} {
			imgs[d] = makeImage(d, gib, *dataPerGiB)
		}
		cases := []struct{ size int64 }{{size}}
		if gib == 4 {
			cases = append(cases, struct{ size int64 }{2 * size})
		}
		for _, c := range cases {
			times := map[string][]time.Duration{}
			space := map[string]int64{}
			if c.size != size {
				// The first VM of a size makes the cached grown layer: once.
				t0 := time.Now()
				dst := filepath.Join(*ext4, "vm.disk")
				if err := qcow2Cached(ctx, imgs[*ext4], dst, c.size); err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(1)
				}
				fmt.Printf("| qcow2, first VM of the size (makes the layer) | %d GiB | %d GiB | %s | | | |\n", gib, c.size>>30, ms(time.Since(t0)))
				if err := os.Remove(dst); err != nil {
					panic(err)
				}
				t0 = time.Now()
				dst = filepath.Join(*xfs, "vm.disk")
				if err := reflinkCached(ctx, imgs[*xfs], dst, c.size); err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(1)
				}
				fmt.Printf("| reflink, first VM of the size (makes the clone) | %d GiB | %d GiB | %s | | | |\n", gib, c.size>>30, ms(time.Since(t0)))
				if err := os.Remove(dst); err != nil {
					panic(err)
				}
			}
			for r := 0; r < *rounds; r++ {
				// Alternate: rotate the order every round.
				for i := range methods {
					m := methods[(i+r)%len(methods)]
					if c.size != size && strings.HasPrefix(m.name, "baseline cp") {
						continue // cp cannot grow
					}
					dst := filepath.Join(m.dir, "vm.disk")
					syncfs(m.dir)
					free0 := free(m.dir)
					t0 := time.Now()
					if err := m.run(ctx, imgs[m.dir], dst, c.size); err != nil {
						fmt.Fprintln(os.Stderr, m.name, err)
						os.Exit(1)
					}
					times[m.name] = append(times[m.name], time.Since(t0))
					syncfs(m.dir)
					var st unix.Stat_t
					if err := unix.Stat(dst, &st); err != nil {
						panic(err)
					}
					if m.dir == *xfs {
						space[m.name] = free0 - free(m.dir)
					} else {
						space[m.name] = st.Blocks * 512
					}
					if err := os.Remove(dst); err != nil {
						panic(err)
					}
				}
			}
			for _, m := range methods {
				ts := times[m.name]
				if len(ts) == 0 {
					continue
				}
				slices.Sort(ts)
				grow := "-"
				if c.size != size {
					grow = fmt.Sprintf("%d GiB", c.size>>30)
				}
				fmt.Printf("| %s | %d GiB | %s | %s | %s | %s | %s |\n", m.name, gib, grow, ms(ts[len(ts)/2]), ms(ts[0]), ms(ts[len(ts)-1]), human(space[m.name]))
			}
		}
		for _, img := range imgs {
			// Leftovers are reported, not fatal: the figures are printed.
			for _, err := range []error{
				storage.RemoveImageLayers(storage.Options{CacheDir: filepath.Join(*ext4, "cache")}, img),
				storage.RemoveImageLayers(storage.Options{CacheDir: filepath.Join(*xfs, "cache")}, img),
				os.Remove(img),
			} {
				if err != nil {
					fmt.Fprintln(os.Stderr, "cleanup:", err)
				}
			}
		}
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

func human(b int64) string {
	switch {
	case b < 0:
		return "0 (freed)"
	case b < 1<<20:
		return fmt.Sprintf("%d KiB", b>>10)
	}
	return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
}

// syncfs flushes dir's filesystem, so one method's writeback is not
// measured in the next one's time.
func syncfs(dir string) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		panic(err)
	}
	if err := errors.Join(unix.Syncfs(fd), unix.Close(fd)); err != nil {
		panic(err)
	}
}

func free(dir string) int64 {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		panic(err)
	}
	return int64(st.Bfree) * st.Bsize
}

// makeImage writes a sparse ext4 image of gib GiB with mb MB of real data
// per GiB, written into the middle of each 128 MiB block group (free
// blocks of a fresh ext4, so the filesystem stays valid), mode 0444.
func makeImage(dir string, gib, mb int64) string {
	img := filepath.Join(dir, fmt.Sprintf("image-%dG.ext4", gib))
	if err := os.Remove(img); err != nil && !errors.Is(err, os.ErrNotExist) {
		panic(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-b", "4096", img, fmt.Sprintf("%dG", gib)).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "mkfs: %v %s\n", err, out)
		os.Exit(1)
	}
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		panic(err)
	}
	perGroup := mb << 20 / 8 // 8 groups of 128 MiB per GiB
	buf := make([]byte, perGroup)
	rng := rand.New(rand.NewPCG(uint64(gib), 1))
	for g := int64(0); g < gib*8; g++ {
		for i := range buf {
			buf[i] = byte(rng.Uint32())
		}
		if _, err := f.WriteAt(buf, g*(128<<20)+(64<<20)); err != nil {
			panic(err)
		}
	}
	if err := errors.Join(f.Sync(), f.Close(), os.Chmod(img, 0o444)); err != nil {
		panic(err)
	}
	return img
}
