package agent

import (
	"context"
	"errors"
	"io"
	"sync"

	"golang.org/x/crypto/ssh"
)

// ProxyChannels forwards every channel the CLI opens (from, the channels
// of an in-process SSH server the daemon serves on an upgraded API
// connection) to the agent (to), with their data, stderr, EOF and requests
// both ways, until from is closed or ctx ends. It returns once every
// forwarded channel has ended. A channel the agent refuses is refused to
// the CLI with the agent's reason.
func ProxyChannels(ctx context.Context, from <-chan ssh.NewChannel, to ssh.Conn) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case nc, ok := <-from:
			if !ok {
				return nil
			}
			wg.Go(func() { proxyChannel(ctx, nc, to) })
		}
	}
}

func proxyChannel(ctx context.Context, nc ssh.NewChannel, to ssh.Conn) {
	out, outReqs, err := to.OpenChannel(nc.ChannelType(), nc.ExtraData())
	if err != nil {
		if oe, ok := errors.AsType[*ssh.OpenChannelError](err); ok {
			_ = nc.Reject(oe.Reason, oe.Message)
		} else {
			_ = nc.Reject(ssh.ConnectionFailed, "guest agent: "+err.Error())
		}
		return
	}
	in, inReqs, err := nc.Accept()
	if err != nil {
		out.Close()
		return
	}
	stop := context.AfterFunc(ctx, func() {
		in.Close()
		out.Close()
	})
	defer stop()

	// Agent to CLI: stdout and stderr, then EOF once both are done.
	var output sync.WaitGroup
	output.Go(func() { _, _ = io.Copy(in, out) })
	output.Go(func() { _, _ = io.Copy(in.Stderr(), out.Stderr()) })
	outputDone := make(chan struct{})
	go func() {
		output.Wait()
		_ = in.CloseWrite()
		close(outputDone)
	}()
	// CLI to agent: stdin, then EOF.
	go func() {
		_, _ = io.Copy(out, in)
		_ = out.CloseWrite()
	}()
	// CLI's requests (pty-req, exec, window-change, signal...) to the agent.
	// They end when the CLI closes the channel: the agent's end is closed
	// then, which kills a command still running.
	go func() {
		forwardRequests(inReqs, out, nil)
		out.Close()
	}()
	// Agent's requests (exit-status, exit-signal) to the CLI, after all
	// the output: a CLI reading the exit first could drop output still
	// in flight.
	forwardRequests(outReqs, in, outputDone)
	// The agent closed its end: the command is over.
	<-outputDone
	in.Close()
	out.Close()
}

// forwardRequests sends each request of reqs on ch and relays the answer,
// until reqs is closed. Exit requests wait for after, if set.
func forwardRequests(reqs <-chan *ssh.Request, ch ssh.Channel, after <-chan struct{}) {
	for r := range reqs {
		if after != nil && (r.Type == "exit-status" || r.Type == "exit-signal") {
			<-after
		}
		ok, err := ch.SendRequest(r.Type, r.WantReply, r.Payload)
		if r.WantReply {
			_ = r.Reply(ok && err == nil, nil)
		}
	}
}
