package storage

import (
	"encoding/binary"
	"fmt"
	"os"

	"github.com/banger-vm/banger/errdefs"
)

// The overlay is written directly, in the layout qemu-img create uses, so
// making one costs a few small writes instead of starting qemu-img (tens to
// hundreds of milliseconds). Layout, in 64 KiB clusters:
//
//	0      header (version 3), backing-format extension "raw", backing file name
//	1      refcount table: one entry, pointing at cluster 2
//	2      refcount block: 16-bit refcounts, 1 for each cluster in use
//	3...   L1 table, all zero (nothing allocated: every read goes to the backing file)
const (
	qcow2ClusterBits   = 16
	qcow2ClusterSize   = 1 << qcow2ClusterBits
	qcow2HeaderLength  = 104
	qcow2RefcountOrder = 4 // 16-bit refcounts
	qcow2MaxBackingLen = 1023
)

// qcow2Overlay returns the bytes of a fresh overlay of size bytes backed by
// the file backing in format, and the file's length (the tail is zero:
// holes).
func qcow2Overlay(backing string, format Format, size int64) ([]byte, int64, error) {
	if len(backing) == 0 || len(backing) > qcow2MaxBackingLen {
		return nil, 0, fmt.Errorf("backing file name of %d bytes: qcow2 takes 1 to %d: %w", len(backing), qcow2MaxBackingLen, errdefs.ErrInvalidArgument)
	}
	if size <= 0 || size%512 != 0 {
		return nil, 0, fmt.Errorf("qcow2 virtual size %d is not a positive multiple of 512: %w", size, errdefs.ErrInvalidArgument)
	}
	const l2Covers = (qcow2ClusterSize / 8) * qcow2ClusterSize // 512 MiB per L2 table
	l1Size := (size + l2Covers - 1) / l2Covers
	l1Clusters := (l1Size*8 + qcow2ClusterSize - 1) / qcow2ClusterSize
	clusters := 3 + l1Clusters
	if clusters > qcow2ClusterSize/2 { // one refcount block holds 32768 refcounts
		return nil, 0, fmt.Errorf("qcow2 virtual size %d is too large: %w", size, errdefs.ErrInvalidArgument)
	}
	buf := make([]byte, 3*qcow2ClusterSize)
	be := binary.BigEndian
	h := buf[:qcow2ClusterSize]
	be.PutUint32(h[0:], qcow2Magic)
	be.PutUint32(h[4:], 3)
	// backing file offset/size at 8 and 16, set below
	be.PutUint32(h[20:], qcow2ClusterBits)
	be.PutUint64(h[24:], uint64(size))
	be.PutUint32(h[32:], 0) // no encryption
	be.PutUint32(h[36:], uint32(l1Size))
	be.PutUint64(h[40:], 3*qcow2ClusterSize) // L1 table
	be.PutUint64(h[48:], 1*qcow2ClusterSize) // refcount table
	be.PutUint32(h[56:], 1)                  // refcount table clusters
	// no snapshots, no incompatible/compatible/autoclear features (72..95)
	be.PutUint32(h[96:], qcow2RefcountOrder)
	be.PutUint32(h[100:], qcow2HeaderLength)
	off := qcow2HeaderLength
	be.PutUint32(h[off:], qcow2ExtBackingFmt)
	if format != FormatRaw && format != FormatQCOW2 {
		return nil, 0, fmt.Errorf("backing format %q: %w", format, errdefs.ErrInvalidArgument)
	}
	be.PutUint32(h[off+4:], uint32(len(format)))
	copy(h[off+8:], format)
	off += 8 + 8
	be.PutUint32(h[off:], qcow2ExtEnd)
	off += 8
	be.PutUint64(h[8:], uint64(off))
	be.PutUint32(h[16:], uint32(len(backing)))
	copy(h[off:], backing)

	be.PutUint64(buf[1*qcow2ClusterSize:], 2*qcow2ClusterSize) // refcount block 0
	rb := buf[2*qcow2ClusterSize:]
	for c := int64(0); c < clusters; c++ {
		be.PutUint16(rb[2*c:], 1)
	}
	// Trim the trailing zeros of the refcount block: they are holes.
	used := 2*qcow2ClusterSize + 2*clusters
	return buf[:used], clusters * qcow2ClusterSize, nil
}

// writeQCOW2Overlay writes a fresh overlay into f (new and empty).
func writeQCOW2Overlay(f *os.File, backing string, format Format, size int64) error {
	b, length, err := qcow2Overlay(backing, format, size)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(b, 0); err != nil {
		return err
	}
	if err := f.Truncate(length); err != nil {
		return err
	}
	return f.Sync()
}
