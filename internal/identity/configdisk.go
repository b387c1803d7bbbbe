package identity

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/cavaliergopher/cpio"

	"github.com/banger-vm/banger/errdefs"
)

// The config disk is a VM's identity for banger's initramfs, attached as a
// second, read-only disk. Its first sector is ConfigDiskMagic followed by
// zeros; from byte ConfigDiskHeaderSize on it holds an uncompressed newc
// cpio archive of the identity files (names relative to the root, with
// their modes and owners), zero-padded to a whole number of sectors. The
// initramfs finds it by the magic on a read-only block device that is not
// the root (Firecracker drives have no serial), applies it onto the mounted
// root before switch_root, and applies nothing when there is none.
const (
	ConfigDiskMagic      = "BANGER-CONFIG-V1"
	ConfigDiskHeaderSize = 512
	// ConfigDiskSerial is the virtio-blk serial QEMU gives the config
	// disk; the initramfs does not need it (it goes by the magic) but it
	// names the disk in the guest's /dev/disk/by-id.
	ConfigDiskSerial = "banger-config"
)

// configAllowed reports whether the initramfs applies p: the fixed list
// the init script enforces too (see internal/image/initramfs/init.sh).
// Anything else in an archive makes the init refuse it whole.
func configAllowed(p string, dir bool) bool {
	if safePath(p) != nil || p == "/" {
		return false
	}
	if dir {
		switch p {
		case "/etc/systemd", "/etc/systemd/network", "/etc/ssh", "/root", "/root/.ssh", "/home":
			return true
		}
		parts := strings.Split(p[1:], "/")
		return parts[0] == "home" && (len(parts) == 2 || len(parts) == 3 && parts[2] == ".ssh")
	}
	switch p {
	case "/etc/hostname", "/etc/hosts", "/etc/machine-id", "/etc/resolv.conf", NetworkFile,
		"/root/.ssh/authorized_keys":
		return true
	}
	if d, name := path.Split(p); d == "/etc/ssh/" {
		return hostKeyRE.MatchString(strings.TrimSuffix(name, ".pub"))
	}
	parts := strings.Split(p[1:], "/")
	return len(parts) == 4 && parts[0] == "home" && parts[2] == ".ssh" && parts[3] == "authorized_keys"
}

// WriteConfigDisk writes the config disk of id at path (mode 0600: it
// holds the VM's private host keys), replacing any file there; img is the
// image's account and hosts file (ReadImage). It touches no image.
func WriteConfigDisk(path string, id Identity, img ImageFacts) error {
	list, err := Files(id, img)
	if err == nil {
		err = writeConfigDisk(path, list)
	}
	if err != nil {
		return fmt.Errorf("config disk of vm %q: %w", id.Hostname, err)
	}
	return nil
}

// ConfigDisk returns the config disk image holding list. It refuses a file
// the initramfs would not apply (see configAllowed) and any other mode bit
// than the permissions (no setuid, no device, no link).
func ConfigDisk(list []File) ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteString(ConfigDiskMagic)
	buf.Write(make([]byte, ConfigDiskHeaderSize-len(ConfigDiskMagic)))
	w := cpio.NewWriter(&buf)
	seen := map[string]bool{}
	for _, f := range list {
		if f.Mode&^(os.ModeDir|os.ModePerm) != 0 {
			return nil, errdefs.InvalidArgument("%s: mode %v is not a plain file or directory mode", f.Path, f.Mode)
		}
		if !configAllowed(f.Path, f.Mode.IsDir()) {
			return nil, errdefs.InvalidArgument("%q is not a path banger's initramfs applies", f.Path)
		}
		if seen[f.Path] {
			return nil, errdefs.InvalidArgument("%q listed twice", f.Path)
		}
		seen[f.Path] = true
		h := &cpio.Header{
			Name: f.Path[1:], Mode: cpio.FileMode(f.Mode.Perm()),
			Uid: int(f.UID), Guid: int(f.GID), Links: 1, Inode: int64(len(seen)),
		}
		if f.Mode.IsDir() {
			h.Mode |= cpio.TypeDir
			h.Links = 2
		} else {
			h.Mode |= cpio.TypeReg
			h.Size = int64(len(f.Data))
		}
		if err := w.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := w.Write(f.Data); err != nil && !f.Mode.IsDir() {
			return nil, err
		}
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	if pad := buf.Len() % ConfigDiskHeaderSize; pad != 0 {
		buf.Write(make([]byte, ConfigDiskHeaderSize-pad))
	}
	return buf.Bytes(), nil
}

func writeConfigDisk(path string, list []File) error {
	data, err := ConfigDisk(list)
	if err != nil {
		return err
	}
	return writePrivateFile(path, data)
}

// writePrivateFile writes data to path through a temporary file in the same
// directory, mode 0600 set explicitly, renamed into place.
func writePrivateFile(path string, data []byte) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			if rerr := os.Remove(tmp.Name()); rerr != nil {
				err = errors.Join(err, rerr)
			}
		}
	}()
	if err = tmp.Chmod(0o600); err != nil {
		return err
	}
	if _, err = io.Copy(tmp, bytes.NewReader(data)); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
