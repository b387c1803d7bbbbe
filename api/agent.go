package api

// The guest agent through the daemon (issue 10).

// AgentUpgrade is the Upgrade protocol of GET /v1/vms/{ref}/agent: after
// the daemon's 101, the connection carries SSH (the daemon serves it and
// forwards each channel to the VM's banger-agent). Without the Upgrade
// header the route answers AgentStatus once the agent is ready.
const AgentUpgrade = "banger-ssh"

// AgentWaitParam is the query parameter of GET /v1/vms/{ref}/agent giving
// how long to wait for the agent to be ready (a Go duration; the daemon
// waits at least 30 s).
const AgentWaitParam = "wait"

// AgentStatus is a ready agent.
type AgentStatus struct {
	Protocol int    `json:"protocol"` // the agent's protocol version
	Build    string `json:"build"`    // its build version
	// User is the account commands run as by default (the daemon's guest
	// user; empty: root).
	User string `json:"user,omitempty"`
}

// GuestUserHeader carries AgentStatus.User in the 101 answer.
const GuestUserHeader = "Banger-Guest-User"
