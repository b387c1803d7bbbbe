// Package vmlinux turns an x86 bzImage (what Debian's kernel packages ship
// and QEMU boots) into the uncompressed ELF vmlinux that Firecracker boots,
// and checks that an ELF kernel has a boot entry Firecracker can use: the
// Xen PVH note (XEN_ELFNOTE_PHYS32_ENTRY) or a 64-bit entry point.
//
// The bzImage's setup header says where the compressed kernel is
// (payload_offset, payload_length, boot protocol 2.08+). Its first bytes
// say how it is compressed; its last four bytes are the uncompressed size.
package vmlinux

import (
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz"
	"github.com/ulikunitz/xz/lzma"

	"github.com/banger-vm/banger/errdefs"
)

// Setup header fields (Documentation/arch/x86/boot.rst).
const (
	offSetupSects    = 0x1f1
	offHeaderMagic   = 0x202
	offVersion       = 0x206
	offPayloadOffset = 0x248
	offPayloadLength = 0x24c
	minVersion       = 0x0208 // payload_offset/length appeared in 2.08
	headerEnd        = 0x250

	// maxVmlinux bounds the uncompressed size we accept (a decompression
	// bomb or a corrupt size field must not eat the host's memory).
	maxVmlinux = 1 << 30
)

// XenElfnotePhys32Entry is the ELF note type of the PVH entry point, in a
// note named "Xen".
const XenElfnotePhys32Entry = 18

// Compression names, as reported by Extract.
const (
	Gzip  = "gzip"
	XZ    = "xz"
	Zstd  = "zstd"
	LZ4   = "lz4"
	Bzip2 = "bzip2"
	LZMA  = "lzma"
	LZO   = "lzo"
)

var magics = []struct {
	name  string
	magic []byte
}{
	{Gzip, []byte{0x1f, 0x8b}},
	{XZ, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}},
	{Zstd, []byte{0x28, 0xb5, 0x2f, 0xfd}},
	{LZ4, []byte{0x02, 0x21, 0x4c, 0x18}}, // the legacy frame the kernel uses
	{Bzip2, []byte("BZh")},
	{LZMA, []byte{0x5d, 0x00, 0x00}},
	{LZO, []byte{0x89, 'L', 'Z', 'O'}},
}

// Payload returns the compressed kernel inside a bzImage and its format.
func Payload(bzImage []byte) (payload []byte, compression string, err error) {
	if len(bzImage) < headerEnd || string(bzImage[offHeaderMagic:offHeaderMagic+4]) != "HdrS" {
		return nil, "", fmt.Errorf("not an x86 bzImage (no HdrS setup header): %w", errdefs.ErrInvalidArgument)
	}
	if v := binary.LittleEndian.Uint16(bzImage[offVersion:]); v < minVersion {
		return nil, "", fmt.Errorf("bzImage boot protocol %d.%02d has no payload fields (need 2.08+): %w",
			v>>8, v&0xff, errdefs.ErrNotSupported)
	}
	setupSects := int(bzImage[offSetupSects])
	if setupSects == 0 {
		setupSects = 4
	}
	start := uint64(setupSects+1) * 512
	off := uint64(binary.LittleEndian.Uint32(bzImage[offPayloadOffset:]))
	n := uint64(binary.LittleEndian.Uint32(bzImage[offPayloadLength:]))
	if n < 8 || start+off+n > uint64(len(bzImage)) {
		return nil, "", fmt.Errorf("bzImage payload (offset %d, length %d) lies outside the %d-byte file: %w",
			start+off, n, len(bzImage), errdefs.ErrInvalidArgument)
	}
	payload = bzImage[start+off : start+off+n]
	for _, m := range magics {
		if bytes.HasPrefix(payload, m.magic) {
			return payload, m.name, nil
		}
	}
	return nil, "", fmt.Errorf("bzImage payload has an unknown compression (magic % x): %w",
		payload[:min(len(payload), 6)], errdefs.ErrNotSupported)
}

// Extract decompresses the kernel inside a bzImage and returns the ELF
// vmlinux, checked with Inspect, and the compression it used.
func Extract(bzImage []byte) (vmlinux []byte, compression string, err error) {
	payload, compression, err := Payload(bzImage)
	if err != nil {
		return nil, "", err
	}
	// The build appends the uncompressed size (gzip's own trailer is the same field).
	size := binary.LittleEndian.Uint32(payload[len(payload)-4:])
	if size == 0 || size > maxVmlinux {
		return nil, compression, fmt.Errorf("bzImage says the kernel is %d bytes uncompressed: %w", size, errdefs.ErrInvalidArgument)
	}
	body := payload[:len(payload)-4]
	var r io.Reader
	switch compression {
	case Gzip:
		gz, err := gzip.NewReader(bytes.NewReader(payload))
		if err != nil {
			return nil, compression, fmt.Errorf("gzip payload: %w", err)
		}
		gz.Multistream(false)
		r = gz
	case XZ:
		x, err := xz.ReaderConfig{SingleStream: true}.NewReader(bytes.NewReader(body))
		if err != nil {
			return nil, compression, fmt.Errorf("xz payload: %w", err)
		}
		r = x
	case Zstd:
		z, err := zstd.NewReader(bytes.NewReader(body), zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxWindow(1<<30), zstd.WithDecoderMaxMemory(maxVmlinux+1))
		if err != nil {
			return nil, compression, fmt.Errorf("zstd payload: %w", err)
		}
		defer z.Close()
		r = z
	case LZ4:
		r = &lz4Legacy{src: body[4:]}
	case Bzip2:
		r = bzip2.NewReader(bytes.NewReader(body))
	case LZMA:
		l, err := lzma.NewReader(bytes.NewReader(body))
		if err != nil {
			return nil, compression, fmt.Errorf("lzma payload: %w", err)
		}
		r = l
	default:
		return nil, compression, fmt.Errorf("%s-compressed kernels cannot be unpacked by banger (hint: use a kernel built with gzip, xz, zstd or lz4): %w",
			compression, errdefs.ErrNotSupported)
	}
	out := bytes.NewBuffer(make([]byte, 0, size))
	n, err := io.Copy(out, io.LimitReader(r, int64(size)+1))
	if err != nil {
		return nil, compression, fmt.Errorf("decompress %s payload: %w%s", compression, err, hint(compression))
	}
	if n != int64(size) {
		return nil, compression, fmt.Errorf("decompressed %s payload is %d bytes, the bzImage says %d: %w",
			compression, n, size, errdefs.ErrInvalidArgument)
	}
	if _, err := Inspect(bytes.NewReader(out.Bytes())); err != nil {
		return nil, compression, fmt.Errorf("decompressed %s payload: %w", compression, err)
	}
	return out.Bytes(), compression, nil
}

func hint(compression string) string {
	if compression == XZ {
		// x86 kernels are xz-compressed with the x86 BCJ filter, which the
		// xz library does not implement.
		return " (hint: xz kernels with a BCJ filter are not supported)"
	}
	return ""
}

// lz4Legacy reads the lz4 legacy frame the kernel build writes (lz4 -l):
// after the magic, blocks of a 4-byte compressed size and the block, each
// decompressing to at most 8 MiB. The magic may repeat between blocks.
type lz4Legacy struct {
	src []byte
	buf []byte // decompressed, not yet read
}

const (
	lz4LegacyMagic = 0x184c2102
	lz4LegacyBlock = 8 << 20
)

func (l *lz4Legacy) Read(p []byte) (int, error) {
	for len(l.buf) == 0 {
		if len(l.src) == 0 {
			return 0, io.EOF
		}
		if len(l.src) < 4 {
			return 0, fmt.Errorf("lz4: %d trailing bytes: %w", len(l.src), io.ErrUnexpectedEOF)
		}
		n := binary.LittleEndian.Uint32(l.src)
		l.src = l.src[4:]
		if n == lz4LegacyMagic {
			continue
		}
		if uint64(n) > uint64(len(l.src)) {
			return 0, fmt.Errorf("lz4: block of %d bytes, %d left: %w", n, len(l.src), io.ErrUnexpectedEOF)
		}
		dst := make([]byte, lz4LegacyBlock)
		k, err := lz4.UncompressBlock(l.src[:n], dst)
		if err != nil {
			return 0, fmt.Errorf("lz4: %w", err)
		}
		l.src = l.src[n:]
		l.buf = dst[:k]
	}
	k := copy(p, l.buf)
	l.buf = l.buf[k:]
	return k, nil
}

// Info is what Inspect found in an ELF kernel.
type Info struct {
	Entry    uint64 `json:"entry"`               // ELF e_entry (64-bit boot protocol)
	PVHEntry uint64 `json:"pvh_entry,omitempty"` // XEN_ELFNOTE_PHYS32_ENTRY, 0 if absent
}

// Inspect checks that r holds a 64-bit x86 ELF kernel with loadable
// segments and a usable entry: the PVH note or a 64-bit entry point.
func Inspect(r io.ReaderAt) (Info, error) {
	f, err := elf.NewFile(r)
	if err != nil {
		return Info{}, fmt.Errorf("not an ELF kernel: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	// No Close: a File made by NewFile has nothing to close (the caller
	// owns r).
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC {
		return Info{}, fmt.Errorf("ELF kernel is %v %v %v, want ELFCLASS64 EM_X86_64 ET_EXEC: %w",
			f.Class, f.Machine, f.Type, errdefs.ErrInvalidArgument)
	}
	info := Info{Entry: f.Entry}
	loads := 0
	for _, p := range f.Progs {
		switch p.Type {
		case elf.PT_LOAD:
			loads++
		case elf.PT_NOTE:
			data, err := io.ReadAll(p.Open())
			if err != nil {
				return Info{}, fmt.Errorf("ELF kernel: read note segment: %w", err)
			}
			if e, ok := pvhEntry(data, f.ByteOrder); ok {
				info.PVHEntry = e
			}
		}
	}
	if loads == 0 {
		return Info{}, fmt.Errorf("ELF kernel has no loadable segment: %w", errdefs.ErrInvalidArgument)
	}
	if info.PVHEntry == 0 && info.Entry == 0 {
		return Info{}, fmt.Errorf("ELF kernel has neither a PVH entry note nor an entry point: %w", errdefs.ErrInvalidArgument)
	}
	return info, nil
}

// pvhEntry finds the Xen PHYS32_ENTRY note in a note segment.
func pvhEntry(data []byte, bo binary.ByteOrder) (uint64, bool) {
	align4 := func(n uint32) uint64 { return (uint64(n) + 3) &^ 3 }
	for len(data) >= 12 {
		namesz, descsz, typ := bo.Uint32(data), bo.Uint32(data[4:]), bo.Uint32(data[8:])
		data = data[12:]
		if align4(namesz) > uint64(len(data)) {
			return 0, false
		}
		name := data[:namesz]
		data = data[align4(namesz):]
		if align4(descsz) > uint64(len(data)) {
			return 0, false
		}
		desc := data[:descsz]
		data = data[align4(descsz):]
		if typ != XenElfnotePhys32Entry || string(bytes.TrimRight(name, "\x00")) != "Xen" {
			continue
		}
		switch len(desc) {
		case 4:
			return uint64(bo.Uint32(desc)), true
		case 8:
			return bo.Uint64(desc), true
		}
	}
	return 0, false
}

// ExtractFile reads the bzImage at src and writes its vmlinux to dst
// (created, mode 0644; removed again on error).
func ExtractFile(src, dst string) (Info, string, error) {
	bz, err := os.ReadFile(src)
	if err != nil {
		return Info{}, "", err
	}
	elfData, compression, err := Extract(bz)
	if err != nil {
		return Info{}, compression, fmt.Errorf("%s: %w", src, err)
	}
	info, err := Inspect(bytes.NewReader(elfData))
	if err != nil {
		return Info{}, compression, err
	}
	if err := writeFile(dst, elfData); err != nil {
		return Info{}, compression, err
	}
	return info, compression, nil
}

func writeFile(dst string, data []byte) (err error) {
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			err = errors.Join(err, os.Remove(dst))
		}
	}()
	_, err = f.Write(data)
	return err
}
