package testenv

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// DNSServer is an authoritative DNS server on loopback (UDP and TCP on one
// port) whose A and AAAA records a test sets and changes while processes
// resolve them: the stand-in for a cluster's DNS, in which a headless
// Service's name resolves to every pod behind it. Built on
// golang.org/x/net/dns/dnsmessage; it answers A and AAAA questions, and
// NXDOMAIN for a name it does not hold.
type DNSServer struct {
	// Addr is host:port, for -dns-server.
	Addr string

	mu    sync.Mutex
	hosts map[string][]netip.Addr // lower case, no trailing dot
	fail  map[string]bool
	fail6 map[string]bool // AAAA questions only
	asked map[string]int
}

// DNS starts a DNS server for the test, stopped when the test ends.
func DNS(t testing.TB) *DNSServer {
	t.Helper()
	s := &DNSServer{hosts: map[string][]netip.Addr{}, fail: map[string]bool{}, fail6: map[string]bool{}, asked: map[string]int{}}
	var pc net.PacketConn
	var ln net.Listener
	var err error
	// UDP on a free port, then TCP on the same port (which may be taken: try again).
	for range 20 {
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("testenv: dns: %v", err)
		}
		ln, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
	}
	if err != nil {
		t.Fatalf("testenv: dns: no port free for both UDP and TCP: %v", err)
	}
	s.Addr = pc.LocalAddr().String()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if out := s.answer(buf[:n], 512); out != nil {
				_, _ = pc.WriteTo(out, from)
			}
		}
	}()
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go s.serveTCP(c)
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		ln.Close()
		wg.Wait()
	})
	return s
}

// Set makes name resolve to addrs (IPv4 or IPv6 literals); none removes the
// name (NXDOMAIN from then on).
func (s *DNSServer) Set(name string, addrs ...string) {
	key := strings.ToLower(strings.TrimSuffix(name, "."))
	var ips []netip.Addr
	for _, a := range addrs {
		ip, err := netip.ParseAddr(a)
		if err != nil {
			panic(fmt.Sprintf("testenv: dns: %q: %v", a, err))
		}
		ips = append(ips, ip)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(ips) == 0 {
		delete(s.hosts, key)
		return
	}
	s.hosts[key] = ips
}

// Fail makes the server answer SERVFAIL for name (a DNS outage) while on.
func (s *DNSServer) Fail(name string, on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail[strings.ToLower(strings.TrimSuffix(name, "."))] = on
}

// FailAAAA makes the server answer SERVFAIL to AAAA questions about name
// while on, A questions as usual: one family's lookup failing, as when its
// UDP answer is lost.
func (s *DNSServer) FailAAAA(name string, on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail6[strings.ToLower(strings.TrimSuffix(name, "."))] = on
}

// Asked returns how many questions about name the server has answered.
func (s *DNSServer) Asked(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.asked[strings.ToLower(strings.TrimSuffix(name, "."))]
}

func (s *DNSServer) serveTCP(c net.Conn) {
	defer c.Close()
	for {
		var l [2]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			return
		}
		msg := make([]byte, int(l[0])<<8|int(l[1]))
		if _, err := io.ReadFull(c, msg); err != nil {
			return
		}
		out := s.answer(msg, 65535)
		if out == nil {
			return
		}
		if _, err := c.Write(append([]byte{byte(len(out) >> 8), byte(len(out))}, out...)); err != nil {
			return
		}
	}
}

// answer builds the response to one query, or nil for what is not one.
func (s *DNSServer) answer(query []byte, limit int) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil || h.Response {
		return nil
	}
	q, err := p.Question()
	if err != nil {
		return nil
	}
	key := strings.ToLower(strings.TrimSuffix(q.Name.String(), "."))
	s.mu.Lock()
	ips, known := s.hosts[key]
	failing := s.fail[key] || s.fail6[key] && q.Type == dnsmessage.TypeAAAA
	s.asked[key]++
	s.mu.Unlock()

	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired}
	switch {
	case failing:
		rh.RCode = dnsmessage.RCodeServerFailure
	case !known:
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(make([]byte, 0, 512), rh)
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil
	}
	if err := b.Question(q); err != nil {
		return nil
	}
	if err := b.StartAnswers(); err != nil {
		return nil
	}
	if known && !failing {
		for _, ip := range ips {
			rr := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 1}
			switch {
			case q.Type == dnsmessage.TypeA && ip.Is4():
				err = b.AResource(rr, dnsmessage.AResource{A: ip.As4()})
			case q.Type == dnsmessage.TypeAAAA && ip.Is6():
				err = b.AAAAResource(rr, dnsmessage.AAAAResource{AAAA: ip.As16()})
			}
			if err != nil {
				return nil
			}
		}
	}
	out, err := b.Finish()
	if err != nil || len(out) > limit {
		return nil
	}
	return out
}
