package netpolicy

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/banger-vm/banger/errdefs"
)

func TestParseRule(t *testing.T) {
	good := []struct{ in, want string }{
		{"10.0.0.0/8:443/tcp", "10.0.0.0/8:443/tcp"},
		{"1.1.1.1:53/udp", "1.1.1.1:53/udp"},
		{"1.1.1.1/32", "1.1.1.1"},
		{"192.168.1.0/24", "192.168.1.0/24"},
		{"0.0.0.0/0:8000-9000", "0.0.0.0/0:8000-9000"},
		{"203.0.113.7:22", "203.0.113.7:22"},
	}
	for _, c := range good {
		r, err := ParseRule(c.in)
		if err != nil {
			t.Errorf("ParseRule(%q): %v", c.in, err)
			continue
		}
		if r.String() != c.want {
			t.Errorf("ParseRule(%q).String() = %q, want %q", c.in, r.String(), c.want)
		}
		if again, err := ParseRule(r.String()); err != nil || again != r {
			t.Errorf("round trip of %q: %+v, %v", c.in, again, err)
		}
	}
	bad := []struct{ in, says string }{
		{"", "not an IP address"},
		{"10.0.0.1/8", "host bits"},
		{"10.0.0.0/33", "not a CIDR"},
		{"example.com:443", "not an IP address"},
		{"::1", "IPv4"},
		{"10.0.0.0/8:0", "1 to 65535"},
		{"10.0.0.0/8:70000", "1 to 65535"},
		{"10.0.0.0/8:443/icmp", "not tcp or udp"},
		{"10.0.0.0/8:9000-8000", "backwards"},
		{"10.0.0.0/8:", "1 to 65535"},
	}
	for _, c := range bad {
		_, err := ParseRule(c.in)
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), c.says) || !strings.Contains(err.Error(), "hint") {
			t.Errorf("ParseRule(%q) = %v, want an invalid-argument error saying %q with a hint", c.in, err, c.says)
		}
	}
}

func TestParsePolicy(t *testing.T) {
	p, err := ParsePolicy("", []string{"10.0.0.0/8:443/tcp"}, []string{"1.2.3.4"}, []string{"team", "ci", "team"})
	if err != nil {
		t.Fatal(err)
	}
	if want := "egress internet; deny 1.2.3.4; allow 10.0.0.0/8:443/tcp; networks ci,team"; p.String() != want {
		t.Errorf("String() = %q, want %q", p.String(), want)
	}
	// Stored as JSON with rules in their flag form, read back equal.
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"egress":"internet","deny":["1.2.3.4"],"allow":["10.0.0.0/8:443/tcp"],"networks":["ci","team"]}`; string(b) != want {
		t.Errorf("json = %s, want %s", b, want)
	}
	var back Policy
	if err := json.Unmarshal(b, &back); err != nil || back.String() != p.String() {
		t.Errorf("json round trip: %+v, %v", back, err)
	}
	if s := (Policy{Egress: EgressNone}).String(); s != "egress none; isolated" {
		t.Errorf("none: %q", s)
	}

	bad := []struct {
		egress             string
		allow, deny, netws []string
		says               string
	}{
		{egress: "public", says: `egress "public"`},
		{allow: []string{"10.0.0.0/8:x"}, says: "--allow"},
		{deny: []string{"bogus"}, says: "--deny"},
		{netws: []string{"Team"}, says: `network name "Team"`},
		{netws: []string{"-x"}, says: `network name "-x"`},
		{netws: []string{strings.Repeat("a", 33)}, says: "network name"},
		{netws: strings.Fields("a b c d e f g h i j k l m n o p q"), says: "at most 16"},
		{allow: slices.Repeat([]string{"1.1.1.1"}, 40), deny: slices.Repeat([]string{"1.1.1.1"}, 25), says: "at most 64"},
	}
	for _, c := range bad {
		_, err := ParsePolicy(c.egress, c.allow, c.deny, c.netws)
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("ParsePolicy(%+v) = %v, want an invalid-argument error saying %q", c, err, c.says)
		}
	}
	var r Rule
	if err := json.Unmarshal([]byte(`"10.0.0.0/8:x"`), &r); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("bad stored rule: %v", err)
	}
}

// render writes rules the way nft(8) lists them, from the expressions
