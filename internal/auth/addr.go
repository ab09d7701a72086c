package auth

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// Proxies is the set of proxies trusted to say who their client is in
// X-Forwarded-For. Empty (the default) trusts none: the address of a
// request is its TCP peer, since anyone can write the header.
type Proxies []netip.Prefix

// ParseProxies reads trusted proxies: addresses (10.0.0.7) or prefixes
// (10.0.0.0/8, fd00::/8).
func ParseProxies(list []string) (Proxies, error) {
	var p Proxies
	for _, s := range list {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if !strings.Contains(s, "/") {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return nil, fmt.Errorf("trusted proxy %q: want an IP address or a prefix (10.0.0.0/8)", s)
			}
			a = a.Unmap()
			p = append(p, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		pf, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("trusted proxy %q: want an IP address or a prefix (10.0.0.0/8)", s)
		}
		if pf.Addr().Is4In6() {
			pf = netip.PrefixFrom(pf.Addr().Unmap(), max(0, pf.Bits()-96))
		}
		p = append(p, pf.Masked())
	}
	return p, nil
}

func (p Proxies) trusts(a netip.Addr) bool {
	for _, pf := range p {
		if pf.Contains(a) {
			return true
		}
	}
	return false
}

// ClientAddr returns the address of the client of r: its TCP peer, or,
// when that peer is a trusted proxy, the right-most address of
// X-Forwarded-For that is not a trusted proxy (every hop appends the
// address it saw, so only the hops our proxies added can be believed; what
// a client writes there itself is to the left of them). An unparsable hop
// ends the walk at the last address believed. The zero Addr means the peer
// address itself could not be read.
func (p Proxies) ClientAddr(r *http.Request) netip.Addr {
	peer := peerAddr(r.RemoteAddr)
	if len(p) == 0 || !peer.IsValid() || !p.trusts(peer) {
		return peer
	}
	var hops []string
	for _, v := range r.Header.Values("X-Forwarded-For") {
		hops = append(hops, strings.Split(v, ",")...)
	}
	client := peer
	for i := len(hops) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			return client
		}
		client = a.Unmap()
		if !p.trusts(client) {
			return client
		}
	}
	return client
}

func peerAddr(remote string) netip.Addr {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}
	}
	return a.Unmap()
}

// SourceKey is the key under which the failures of a client address are
// counted: an IPv4 address itself, an IPv6 address's /64 (the least a
// subscriber or a cloud host is given; counting single IPv6 addresses
// would let one host try 2^64 times). The zero Addr gives "?".
func SourceKey(a netip.Addr) string {
	switch {
	case !a.IsValid():
		return "?"
	case a.Is4():
		return a.String()
	default:
		pf, _ := a.Prefix(64)
		return pf.String()
	}
}
