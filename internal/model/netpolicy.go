package model

// NetPolicy is what a VM's guest may reach (network isolation), as the
// user gave it: internal/netpolicy parses and checks it (netpolicy.ParsePolicy).
// The zero value is the default: egress to public destinations only, no
// named network (isolated from every other guest).
type NetPolicy struct {
	Egress   string   `json:"egress,omitempty"`   // "internet" or "none"; empty: internet
	Allow    []string `json:"allow,omitempty"`    // CIDR[:PORT[-PORT][/tcp|/udp]]
	Deny     []string `json:"deny,omitempty"`     // same form; checked before Allow
	Networks []string `json:"networks,omitempty"` // named networks: VMs sharing one reach each other
}
