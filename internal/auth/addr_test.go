package auth

import (
	"net/http/httptest"
	"net/netip"
	"testing"
)

func TestClientAddr(t *testing.T) {
	proxies, err := ParseProxies([]string{"10.0.0.0/8", "192.168.1.1", "fd00::/8"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		proxies Proxies
		peer    string
		xff     []string
		want    string
	}{
		{"no proxies: the peer, whatever the header says", nil, "203.0.113.5:4000", []string{"198.51.100.1"}, "203.0.113.5"},
		{"untrusted peer: the header is ignored", proxies, "203.0.113.5:4000", []string{"198.51.100.1"}, "203.0.113.5"},
		{"trusted peer: the hop it saw", proxies, "10.1.2.3:4000", []string{"198.51.100.1"}, "198.51.100.1"},
		{"a client's own entries are left of the real one", proxies, "10.1.2.3:4000", []string{"1.1.1.1, 2.2.2.2, 198.51.100.1"}, "198.51.100.1"},
		{"chained trusted proxies are skipped", proxies, "10.1.2.3:4000", []string{"1.1.1.1, 198.51.100.1", "192.168.1.1, 10.9.9.9"}, "198.51.100.1"},
		{"all hops trusted: the left-most", proxies, "10.1.2.3:4000", []string{"10.0.0.1, 10.0.0.2"}, "10.0.0.1"},
		{"an unparsable hop stops the walk", proxies, "10.1.2.3:4000", []string{"1.1.1.1, junk, 10.0.0.2"}, "10.0.0.2"},
		{"no header behind a proxy: the proxy", proxies, "10.1.2.3:4000", nil, "10.1.2.3"},
		{"IPv6 proxy, v4-mapped hop", proxies, "[fd00::1]:4000", []string{"::ffff:198.51.100.7"}, "198.51.100.7"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/", nil)
			r.RemoteAddr = tc.peer
			for _, v := range tc.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			if got := tc.proxies.ClientAddr(r); got != netip.MustParseAddr(tc.want) {
				t.Fatalf("ClientAddr = %v, want %s", got, tc.want)
			}
		})
	}
}

func TestParseProxiesRefusesJunk(t *testing.T) {
	for _, bad := range []string{"10.0.0.0/33", "host.example", "10.0.0"} {
		if _, err := ParseProxies([]string{bad}); err == nil {
			t.Errorf("ParseProxies(%q): no error", bad)
		}
	}
}

func TestSourceKeyGroupsIPv6By64(t *testing.T) {
	a := SourceKey(netip.MustParseAddr("2001:db8:1:2:aaaa::1"))
	b := SourceKey(netip.MustParseAddr("2001:db8:1:2:ffff::9"))
	c := SourceKey(netip.MustParseAddr("2001:db8:1:3::1"))
	if a != b || a == c {
		t.Fatalf("keys %q %q %q: want the first two equal (same /64), the third apart", a, b, c)
	}
	if k := SourceKey(netip.MustParseAddr("198.51.100.7")); k != "198.51.100.7" {
		t.Fatalf("IPv4 key %q", k)
	}
	if k := SourceKey(netip.Addr{}); k != "?" {
		t.Fatalf("no address: %q", k)
	}
}
