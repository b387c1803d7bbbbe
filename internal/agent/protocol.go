// Package agent is banger's guest agent: the protocol it speaks with the
// host, the guest-side server (run by cmd/banger-agent) and the host-side
// client.
//
// The protocol is SSH's own (RFC 4251-4254) over a host-only channel: a
// virtio-serial port on QEMU, a vsock port on Firecracker. SSH is a
// versioned, multiplexed protocol that already has what an agent needs:
// exec sessions with separate stdin, stdout and stderr, PTY requests,
// window changes, exit status and exit signal, and sftp for copies that
// keep modes. banger's CLI already speaks it, so a daemon can forward the
// CLI's SSH channels to the agent unchanged (ProxyChannels).
//
// The channel is the trust root: only this host's daemon can reach it. The
// agent therefore authenticates nobody, and the host does not verify the
// agent's host key (an ephemeral key the agent makes at start). The agent
// never listens on a network.
//
// On top of SSH, banger adds:
//   - the exec payload: a JSON ExecRequest (argv run directly, never through
//     a shell; env, working directory, user), instead of a shell command line;
//   - global requests named "<what>@banger" with JSON payloads and replies
//     (Version, Ready, Identity, Clock, Entropy, Shutdown).
package agent

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// ProtocolVersion is the version of the protocol this build speaks. It
// changes when a request or payload changes incompatibly; the client
// refuses an agent of another version (see checkServerVersion).
const ProtocolVersion = 1

// serverVersionPrefix starts the agent's SSH identification string,
// followed by its protocol version: "SSH-2.0-banger-agent/1".
const serverVersionPrefix = "SSH-2.0-banger-agent/"

// ServerVersion is the SSH identification string of an agent speaking
// protocol version v.
func ServerVersion(v int) string { return serverVersionPrefix + strconv.Itoa(v) }

// clientVersion is the host's SSH identification string (ProtocolVersion).
const clientVersion = "SSH-2.0-banger/1"

// Global request names.
const (
	ReqVersion  = "banger-version@banger"
	ReqReady    = "ready@banger"
	ReqIdentity = "identity@banger"
	ReqClock    = "clock@banger"
	ReqEntropy  = "entropy@banger"
	ReqShutdown = "shutdown@banger"
)

// Limits on what either side accepts.
const (
	// maxPayload bounds a global request's payload and reply.
	maxPayload = 64 << 10
	// MaxEntropy bounds the bytes one entropy request may carry.
	MaxEntropy = 4096
	// maxExecPayload bounds an exec request's JSON.
	maxExecPayload = 256 << 10
)

// VersionInfo is the reply to ReqVersion.
type VersionInfo struct {
	Protocol int    `json:"protocol"`
	Build    string `json:"build"` // the agent binary's build version
}

// ReadyInfo is the reply to ReqReady.
type ReadyInfo struct {
	Ready bool `json:"ready"`
	// BootID is the guest kernel's boot ID: it changes at every boot, so
	// the host can tell a rebooted guest from the one it knew.
	BootID string `json:"boot_id,omitempty"`
	// Identity is true once an identity request has been applied during
	// this agent's life.
	Identity bool `json:"identity"`
}

// Identity is the payload of ReqIdentity: what makes a guest a given VM.
// Empty fields are left as they are.
type Identity struct {
	Hostname  string `json:"hostname,omitempty"`
	MachineID string `json:"machine_id,omitempty"`
	// Network, if set, configures the interface with Network.MAC.
	Network *NetworkIdentity `json:"network,omitempty"`
	DNS     []netip.Addr     `json:"dns,omitempty"`
	// NewHostKeys asks the agent to generate new SSH host keys for the
	// guest's sshd (restarting it if it runs) and return their public
	// halves, for the host to pin.
	NewHostKeys bool `json:"new_host_keys,omitempty"`
}

// NetworkIdentity is an interface's static configuration.
type NetworkIdentity struct {
	MAC     string       `json:"mac"`               // selects the interface, e.g. "52:54:00:12:34:56"
	Address netip.Prefix `json:"address"`           // e.g. 172.30.0.2/24
	Gateway netip.Addr   `json:"gateway,omitzero"`  // optional
	NewMAC  string       `json:"new_mac,omitempty"` // optional: set this MAC on the interface
}

// IdentityResult is the reply to ReqIdentity.
type IdentityResult struct {
	// HostKeys are the new host keys' public halves in authorized_keys
	// form, when NewHostKeys was asked.
	HostKeys []string `json:"host_keys,omitempty"`
}

// ClockRequest is the payload of ReqClock.
type ClockRequest struct {
	UnixNano int64 `json:"unix_nano"`
}

// EntropyRequest is the payload of ReqEntropy.
type EntropyRequest struct {
	Data []byte `json:"data"` // at most MaxEntropy bytes, credited in full
}

// ShutdownRequest is the payload of ReqShutdown.
type ShutdownRequest struct {
	Reboot bool `json:"reboot,omitempty"`
}

// ExecRequest is an exec request's command string: JSON instead of a shell
// command line.
type ExecRequest struct {
	Argv []string `json:"argv"`
	// Env is added to the defaults (PATH, HOME, USER, LOGNAME, SHELL, and
	// TERM with a TTY); SSH "env" requests add to it too.
	Env  map[string]string `json:"env,omitempty"`
	Dir  string            `json:"dir,omitempty"`  // default: the user's home, or /
	User string            `json:"user,omitempty"` // default: root
}

// EnvUser is the SSH "env" request that picks the user of an interactive
// shell (SSH's "shell" request has no payload to carry it). It is not
// passed to the shell.
const EnvUser = "BANGER_USER"

// replyError is how a request's failure travels: a failed global reply
// carries the JSON {"error": "..."}.
type replyError struct {
	Error string `json:"error"`
}

func marshal(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		// Every type marshalled here is one of this package's plain structs.
		panic(fmt.Sprintf("agent: marshal %T: %v", v, err))
	}
	return b
}

// parseServerVersion returns the protocol version in an agent's SSH
// identification string.
func parseServerVersion(s string) (int, bool) {
	rest, ok := strings.CutPrefix(s, serverVersionPrefix)
	if !ok {
		return 0, false
	}
	rest, _, _ = strings.Cut(rest, " ")
	v, err := strconv.Atoi(rest)
	return v, err == nil && v > 0
}

// defaultTimeout bounds a request when the caller's ctx has no deadline.
const defaultTimeout = 30 * time.Second
