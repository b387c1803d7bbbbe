package vmlinux

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz"

	"github.com/banger-vm/banger/errdefs"
)

// fakeELF returns a minimal x86_64 ET_EXEC ELF: one PT_LOAD and, if pvh is
// not zero, a PT_NOTE holding the Xen PHYS32_ENTRY note.
func fakeELF(entry uint64, pvh uint32) []byte {
	le := binary.LittleEndian
	var note bytes.Buffer
	if pvh != 0 {
		// An unrelated note first, then the Xen one.
		for _, n := range []struct {
			name string
			typ  uint32
			desc []byte
		}{
			{"GNU", 3, []byte("build-id")},
			{"Xen", XenElfnotePhys32Entry, le.AppendUint32(nil, pvh)},
		} {
			name := append([]byte(n.name), 0)
			note.Write(le.AppendUint32(nil, uint32(len(name))))
			note.Write(le.AppendUint32(nil, uint32(len(n.desc))))
			note.Write(le.AppendUint32(nil, n.typ))
			note.Write(name)
			note.Write(make([]byte, (4-len(name)%4)%4))
			note.Write(n.desc)
			note.Write(make([]byte, (4-len(n.desc)%4)%4))
		}
	}
	code := bytes.Repeat([]byte{0x90}, 4096) // nops: something to compress
	const ehsize, phsize = 64, 56
	nph := 1
	if note.Len() > 0 {
		nph = 2
	}
	dataOff := uint64(ehsize + phsize*nph)
	var b bytes.Buffer
	b.Write([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0})
	b.Write(make([]byte, 8))
	b.Write(le.AppendUint16(nil, 2))  // ET_EXEC
	b.Write(le.AppendUint16(nil, 62)) // EM_X86_64
	b.Write(le.AppendUint32(nil, 1))  // version
	b.Write(le.AppendUint64(nil, entry))
	b.Write(le.AppendUint64(nil, ehsize)) // phoff
	b.Write(le.AppendUint64(nil, 0))      // shoff
	b.Write(le.AppendUint32(nil, 0))      // flags
	b.Write(le.AppendUint16(nil, ehsize))
	b.Write(le.AppendUint16(nil, phsize))
	b.Write(le.AppendUint16(nil, uint16(nph)))
	b.Write(le.AppendUint16(nil, 64)) // shentsize
	b.Write(le.AppendUint16(nil, 0))  // shnum
	b.Write(le.AppendUint16(nil, 0))  // shstrndx
	ph := func(typ, flags uint32, off, vaddr, size uint64) {
		b.Write(le.AppendUint32(nil, typ))
		b.Write(le.AppendUint32(nil, flags))
		for _, v := range []uint64{off, vaddr, vaddr, size, size, 4} {
			b.Write(le.AppendUint64(nil, v))
		}
	}
	codeOff := dataOff + uint64(note.Len())
	ph(1, 5, codeOff, 0x1000000, uint64(len(code))) // PT_LOAD
	if note.Len() > 0 {
		ph(4, 4, dataOff, 0, uint64(note.Len())) // PT_NOTE
	}
	b.Write(note.Bytes())
	b.Write(code)
	return b.Bytes()
}

// fakeBzImage wraps payload (the compressed kernel, size trailer included)
// in a setup header.
func fakeBzImage(payload []byte) []byte {
	const setupSects = 1
	img := make([]byte, (setupSects+1)*512)
	img[offSetupSects] = setupSects
	copy(img[offHeaderMagic:], "HdrS")
	binary.LittleEndian.PutUint16(img[offVersion:], 0x020f)
	binary.LittleEndian.PutUint32(img[offPayloadOffset:], 16)
	binary.LittleEndian.PutUint32(img[offPayloadLength:], uint32(len(payload)))
	img = append(img, make([]byte, 16)...) // decompressor code, in a real one
	img = append(img, payload...)
	return append(img, make([]byte, 100)...) // and more after the payload
}

func withSize(compressed []byte, size int) []byte {
	return binary.LittleEndian.AppendUint32(compressed, uint32(size))
}

func compress(t *testing.T, kind string, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	switch kind {
	case Gzip:
		w := gzip.NewWriter(&buf)
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes() // gzip's trailer ends with the size
	case XZ:
		w, err := xz.NewWriter(&buf)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	case Zstd:
		w, err := zstd.NewWriter(&buf)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	case LZ4:
		buf.Write(binary.LittleEndian.AppendUint32(nil, lz4LegacyMagic))
		for chunk := range slices.Chunk(data, 1000) { // several blocks
			dst := make([]byte, lz4.CompressBlockBound(len(chunk)))
			n, err := lz4.CompressBlock(chunk, dst, nil)
			if err != nil || n == 0 {
				t.Fatalf("lz4: %d %v", n, err)
			}
			buf.Write(binary.LittleEndian.AppendUint32(nil, uint32(n)))
			buf.Write(dst[:n])
		}
	default:
		t.Fatalf("no compressor for %s", kind)
	}
	return withSize(buf.Bytes(), len(data))
}

func TestExtract(t *testing.T) {
	elfData := fakeELF(0x1000000, 0x1000200)
	for _, kind := range []string{Gzip, XZ, Zstd, LZ4} {
		t.Run(kind, func(t *testing.T) {
			got, c, err := Extract(fakeBzImage(compress(t, kind, elfData)))
			if err != nil {
				t.Fatal(err)
			}
			if c != kind || !bytes.Equal(got, elfData) {
				t.Fatalf("compression %q, %d bytes (equal %v)", c, len(got), bytes.Equal(got, elfData))
			}
			info, err := Inspect(bytes.NewReader(got))
			if err != nil {
				t.Fatal(err)
			}
			if info.PVHEntry != 0x1000200 || info.Entry != 0x1000000 {
				t.Fatalf("info %+v", info)
			}
		})
	}
}

func TestExtractFile(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "vmlinux")
	elfData := fakeELF(0x1000000, 0)
	if err := os.WriteFile(src, fakeBzImage(compress(t, XZ, elfData)), 0o644); err != nil {
		t.Fatal(err)
	}
	info, c, err := ExtractFile(src, dst)
	if err != nil || c != XZ || info.PVHEntry != 0 || info.Entry != 0x1000000 {
		t.Fatalf("ExtractFile: %+v %q %v", info, c, err)
	}
	if got, _ := os.ReadFile(dst); !bytes.Equal(got, elfData) {
		t.Fatal("vmlinux differs")
	}
	// dst exists: refused, and the existing file is left alone.
	if _, _, err := ExtractFile(src, dst); !errors.Is(err, os.ErrExist) {
		t.Fatalf("second ExtractFile: %v", err)
	}
}

func TestExtractRejectsJunk(t *testing.T) {
	elfData := fakeELF(0x1000000, 0x1000200)
	good := compress(t, Gzip, elfData)
	truncated := fakeBzImage(good)
	binary.LittleEndian.PutUint32(truncated[offPayloadLength:], uint32(len(truncated)))
	oldProto := fakeBzImage(good)
	binary.LittleEndian.PutUint16(oldProto[offVersion:], 0x0206)
	notELF := bytes.Repeat([]byte("not a kernel "), 400)
	wrongSize := compress(t, LZ4, elfData)
	binary.LittleEndian.PutUint32(wrongSize[len(wrongSize)-4:], uint32(len(elfData)+1))
	for name, tc := range map[string]struct {
		img  []byte
		want error
	}{
		"empty":             {nil, errdefs.ErrInvalidArgument},
		"no setup header":   {bytes.Repeat([]byte{0}, 4096), errdefs.ErrInvalidArgument},
		"payload too long":  {truncated, errdefs.ErrInvalidArgument},
		"old boot protocol": {oldProto, errdefs.ErrNotSupported},
		"unknown magic":     {fakeBzImage(withSize([]byte("\x00\x01\x02\x03junkjunk"), 8)), errdefs.ErrNotSupported},
		"lzo":               {fakeBzImage(withSize([]byte("\x89LZO\x00junk"), 8)), errdefs.ErrNotSupported},
		"payload not ELF":   {fakeBzImage(compress(t, Gzip, notELF)), errdefs.ErrInvalidArgument},
		"size mismatch":     {fakeBzImage(wrongSize), errdefs.ErrInvalidArgument},
		"corrupt xz":        {fakeBzImage(withSize([]byte("\xfd7zXZ\x00garbagegarbage"), 100)), nil},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := Extract(tc.img)
			if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			t.Log(err)
		})
	}
}

func TestInspect(t *testing.T) {
	if _, err := Inspect(bytes.NewReader(fakeELF(0, 0))); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("no entry at all: %v", err)
	}
	if info, err := Inspect(bytes.NewReader(fakeELF(0, 0x1234))); err != nil || info.PVHEntry != 0x1234 {
		t.Errorf("PVH only: %+v %v", info, err)
	}
	e32 := fakeELF(0x1000000, 0)
	e32[4] = 1 // ELFCLASS32
	if _, err := Inspect(bytes.NewReader(e32)); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("32-bit ELF: %v", err)
	}
}
