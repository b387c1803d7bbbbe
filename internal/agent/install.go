package agent

// Where an image carries the agent, for the image builder.
const (
	// BinaryPath is where the image builder installs banger-agent.
	BinaryPath = "/usr/local/sbin/banger-agent"
	// UnitName is the systemd unit that starts it.
	UnitName = "banger-agent.service"
	// UnitPath is where the unit goes; enable it by linking it from
	// /etc/systemd/system/sysinit.target.wants/.
	UnitPath = "/etc/systemd/system/" + UnitName
)

// SystemdUnit starts the agent early in boot: right after the local file
// systems (it writes /etc for identity requests), before sshd and before
// the network is configured. It has no dependency on the virtio-serial
// device unit: the agent waits for its port itself (and Firecracker guests
// have a vsock instead), so a missing device never delays the boot. It
// restarts if it ever dies.
const SystemdUnit = `[Unit]
Description=banger guest agent
Documentation=https://github.com/banger-vm/banger
DefaultDependencies=no
After=local-fs.target systemd-remount-fs.service
Before=sysinit.target ssh.service sshd.service systemd-networkd.service shutdown.target
Conflicts=shutdown.target

[Service]
Type=simple
ExecStart=` + BinaryPath + `
Restart=always
RestartSec=1
KillMode=process

[Install]
WantedBy=sysinit.target
`
