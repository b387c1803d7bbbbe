package build

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/internal/agent"
)

// installAgent puts Spec.AgentBinary into the root at agent.BinaryPath
// (root:root 0755), its systemd unit at agent.UnitPath (0644), enabled by
// the sysinit.target.wants link systemctl enable would make, and records
// the agent in the manifest.
func (b *builder) installAgent() error {
	if b.spec.AgentBinary == "" {
		return nil
	}
	dst := filepath.Join(b.root, agent.BinaryPath)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("guest agent: %w", err)
	}
	sum, err := copyExecutable(b.spec.AgentBinary, dst)
	if err != nil {
		return fmt.Errorf("guest agent %s: %w", b.spec.AgentBinary, err)
	}
	unit := filepath.Join(b.root, agent.UnitPath)
	if err := os.WriteFile(unit, []byte(agent.SystemdUnit), 0o644); err != nil {
		return fmt.Errorf("guest agent unit: %w", err)
	}
	if err := os.Chmod(unit, 0o644); err != nil {
		return err
	}
	wants := filepath.Join(b.root, "etc/systemd/system/sysinit.target.wants")
	if err := os.MkdirAll(wants, 0o755); err != nil {
		return fmt.Errorf("guest agent unit: %w", err)
	}
	link := filepath.Join(wants, agent.UnitName)
	if err := os.Remove(link); err != nil && !os.IsNotExist(err) {
		return err
	}
	if err := os.Symlink(agent.UnitPath, link); err != nil {
		return fmt.Errorf("enable guest agent: %w", err)
	}
	b.manifest.Agent = &api.ImageAgent{Path: agent.BinaryPath, Protocol: agent.ProtocolVersion, SHA256: sum}
	return nil
}

// copyExecutable copies src to dst (new, 0755, root's) and returns its sha256.
func copyExecutable(src, dst string) (string, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	if fi, err := in.Stat(); err != nil || !fi.Mode().IsRegular() {
		return "", fmt.Errorf("not a regular file")
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	_, err = io.Copy(io.MultiWriter(out, h), in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(dst, 0o755) // not subject to the umask
	}
	if err == nil {
		err = os.Chown(dst, 0, 0)
	}
	if err != nil {
		os.Remove(dst)
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
