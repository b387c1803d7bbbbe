package daemon

import "testing"

// TestAllUnmanaged: a template's networkd has let go only when every link
// state file says unmanaged.
func TestAllUnmanaged(t *testing.T) {
	for _, c := range []struct {
		states string
		want   bool
	}{
		{"ADMIN_STATE=unmanaged\nADMIN_STATE=unmanaged\n", true},
		{"ADMIN_STATE=unmanaged\nADMIN_STATE=configured\n", false},
		{"ADMIN_STATE=configuring\nADMIN_STATE=unmanaged\n", false},
		{"ADMIN_STATE=initialized\n", false},
		{"", true},
	} {
		if got := allUnmanaged(c.states); got != c.want {
			t.Errorf("allUnmanaged(%q) = %v, want %v", c.states, got, c.want)
		}
	}
}
