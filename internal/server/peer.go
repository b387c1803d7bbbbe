package server

import (
	"context"
	"net"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/daemon"
)

type peerKey struct{}

// peerUID is the uid of the process at the other end of a connection, as
// the kernel reports it (SO_PEERCRED), or -1 if unknown.
func peerUID(ctx context.Context) int {
	if uid, ok := ctx.Value(peerKey{}).(int); ok {
		return uid
	}
	return -1
}

// ConnContext records each connection's peer uid in its requests' context.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return ctx
	}
	uid := -1
	_ = raw.Control(func(fd uintptr) { // an error leaves uid unknown: treated as not root
		if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
			uid = int(cred.Uid)
		}
	})
	// The service checks ownership against the caller (daemon.WithCaller).
	return daemon.WithCaller(context.WithValue(ctx, peerKey{}, uid), uid)
}
