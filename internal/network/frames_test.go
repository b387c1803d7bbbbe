package network

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// openTap attaches to the existing tap name inside ns the way a VMM does
// (TUNSETIFF on /dev/net/tun, no packet info; no vnet header, so frames are
// plain Ethernet) and returns it as a pollable file.
func openTap(t *testing.T, ns netns.NsHandle, name string) *os.File {
	t.Helper()
	var f *os.File
	err := inNetNS(ns, func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		ifr, err := unix.NewIfreq(name)
		if err == nil {
			ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
			err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
		}
		if err == nil {
			err = unix.SetNonblock(fd, true)
		}
		if err != nil {
			unix.Close(fd)
			return err
		}
		f = os.NewFile(uintptr(fd), name)
		return nil
	})
	if err != nil {
		t.Fatalf("open tap %q: %v", name, err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// Ethernet frames a stand-in guest writes into its tap.

func ethernet(dst, src net.HardwareAddr, etherType uint16, payload []byte) []byte {
	f := make([]byte, 14, 14+len(payload))
	copy(f[0:6], dst)
	copy(f[6:12], src)
	binary.BigEndian.PutUint16(f[12:14], etherType)
	return append(f, payload...)
}

func arpRequest(mac net.HardwareAddr, ip, target netip.Addr) []byte {
	a := make([]byte, 28)
	binary.BigEndian.PutUint16(a[0:], 1)      // Ethernet
	binary.BigEndian.PutUint16(a[2:], 0x0800) // IPv4
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], 1) // request
	copy(a[8:14], mac)
	src, dst := ip.As4(), target.As4()
	copy(a[14:18], src[:])
	copy(a[24:28], dst[:])
	return ethernet(net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, mac, 0x0806, a)
}

// tcpSYN is an IPv4 TCP SYN from src to dst, with valid checksums.
func tcpSYN(dstMAC, srcMAC net.HardwareAddr, src, dst netip.AddrPort) []byte {
	ip := make([]byte, 20)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], 40)
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // don't fragment
	ip[8], ip[9] = 64, unix.IPPROTO_TCP
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(ip[12:16], s[:])
	copy(ip[16:20], d[:])
	binary.BigEndian.PutUint16(ip[10:], checksum(ip))

	tcp := make([]byte, 20)
	binary.BigEndian.PutUint16(tcp[0:], src.Port())
	binary.BigEndian.PutUint16(tcp[2:], dst.Port())
	binary.BigEndian.PutUint32(tcp[4:], 1000)
	tcp[12] = 5 << 4
	tcp[13] = 0x02 // SYN
	binary.BigEndian.PutUint16(tcp[14:], 64240)
	pseudo := make([]byte, 12, 12+len(tcp))
	copy(pseudo[0:4], s[:])
	copy(pseudo[4:8], d[:])
	pseudo[9] = unix.IPPROTO_TCP
	binary.BigEndian.PutUint16(pseudo[10:], uint16(len(tcp)))
	binary.BigEndian.PutUint16(tcp[16:], checksum(append(pseudo, tcp...)))
	return ethernet(dstMAC, srcMAC, 0x0800, append(ip, tcp...))
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// exchange writes frame into the tap, again every 200ms (the bridge port
// starts forwarding a moment after the carrier comes up, as a guest's first
// packets would find), and reads frames until match accepts one or the
// timeout passes.
func exchange(f *os.File, frame []byte, timeout time.Duration, match func([]byte) bool) ([]byte, error) {
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 65536)
	for {
		if _, err := f.Write(frame); err != nil {
			return nil, err
		}
		next := time.Now().Add(200 * time.Millisecond)
		if next.After(deadline) {
			next = deadline
		}
		f.SetReadDeadline(next)
		for {
			n, err := f.Read(buf)
			if isTimeout(err) && time.Now().Before(deadline) {
				break // send again
			}
			if err != nil {
				return nil, err
			}
			if match(buf[:n]) {
				return append([]byte(nil), buf[:n]...), nil
			}
		}
	}
}

// arpReplyFrom matches the ARP reply of ip to asker.
func arpReplyFrom(ip, asker netip.Addr) func([]byte) bool {
	want, to := ip.As4(), asker.As4()
	return func(f []byte) bool {
		return len(f) >= 42 && binary.BigEndian.Uint16(f[12:]) == 0x0806 &&
			binary.BigEndian.Uint16(f[20:]) == 2 && [4]byte(f[28:32]) == want && [4]byte(f[38:42]) == to
	}
}

// synAckFrom matches a SYN-ACK from `from` to `to`.
func synAckFrom(from, to netip.AddrPort) func([]byte) bool {
	s, d := from.Addr().As4(), to.Addr().As4()
	return func(f []byte) bool {
		if len(f) < 54 || binary.BigEndian.Uint16(f[12:]) != 0x0800 || f[23] != unix.IPPROTO_TCP {
			return false
		}
		ip := f[14:]
		tcp := ip[int(ip[0]&0x0f)*4:]
		return [4]byte(ip[12:16]) == s && [4]byte(ip[16:20]) == d &&
			binary.BigEndian.Uint16(tcp[0:]) == from.Port() && binary.BigEndian.Uint16(tcp[2:]) == to.Port() &&
			tcp[13]&0x12 == 0x12
	}
}

func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }
