package server

import (
	"net/http"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/internal/model"
)

// setVMNetwork replaces the network policy of a stopped VM.
func (s *server) setVMNetwork(w http.ResponseWriter, r *http.Request) {
	var req api.NetworkPolicy
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	v, err := s.svc.SetNetPolicy(r.Context(), r.PathValue("ref"), fromNetworkPolicy(req))
	s.vmResult(w, r, v, err, http.StatusOK)
}

func fromNetworkPolicy(p api.NetworkPolicy) model.NetPolicy {
	return model.NetPolicy{Egress: p.Egress, Allow: p.Allow, Deny: p.Deny, Networks: p.Networks}
}

// toNetworkPolicy is a VM's policy on the wire, with the default egress
// spelled out.
func toNetworkPolicy(p model.NetPolicy) api.NetworkPolicy {
	out := api.NetworkPolicy{Egress: p.Egress, Allow: p.Allow, Deny: p.Deny, Networks: p.Networks}
	if out.Egress == "" {
		out.Egress = "internet"
	}
	return out
}
