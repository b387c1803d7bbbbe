package layout

import (
	"path/filepath"
	"testing"
)

// An image directory's files carry the names layout owns.
func TestImageDirFiles(t *testing.T) {
	l := Layout{StateDir: "/var/lib/banger"}
	d := l.Image("abc")
	if d.Path() != "/var/lib/banger/images/abc" {
		t.Fatalf("image dir %s", d.Path())
	}
	for got, want := range map[string]string{
		d.Kernel(): ImageKernelFile, d.Vmlinux(): ImageVmlinuxFile, d.Initrd(): ImageInitrdFile,
		d.Rootfs(): ImageRootfsFile, d.Manifest(): ImageManifestFile,
	} {
		if got != filepath.Join(d.Path(), want) {
			t.Errorf("%s, want %s in the image dir", got, want)
		}
	}
}
