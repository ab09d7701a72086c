package k8stest

import (
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// loadBalancer stands for a Service of type LoadBalancer (drover-devices):
// each new connection goes to one of the Service's ready pods, round
// robin, as kube-proxy sends it to the endpoints; a pod that stops being
// ready gets no new connection (its open ones live until it closes them).
type loadBalancer struct {
	c        *cluster
	svc      *corev1.Service
	ln       net.Listener
	next     atomic.Uint64
	accepted atomic.Int64
	refused  atomic.Int64 // no ready pod
	wg       sync.WaitGroup
}

func newLoadBalancer(t *testing.T, c *cluster, service string) *loadBalancer {
	t.Helper()
	svc, ok := c.r.services[service]
	if !ok {
		t.Fatalf("no Service %s", service)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lb := &loadBalancer{c: c, svc: svc, ln: ln}
	lb.wg.Add(1)
	go lb.serve()
	t.Cleanup(func() {
		ln.Close()
		lb.wg.Wait()
	})
	return lb
}

// URL is where devices connect.
func (lb *loadBalancer) URL() string { return "ws://" + lb.ln.Addr().String() }

func (lb *loadBalancer) serve() {
	defer lb.wg.Done()
	for {
		conn, err := lb.ln.Accept()
		if err != nil {
			return
		}
		go lb.forward(conn)
	}
}

func (lb *loadBalancer) forward(in net.Conn) {
	defer in.Close()
	pods := lb.c.readyPods(lb.svc.Spec.Selector)
	if len(pods) == 0 {
		lb.refused.Add(1)
		return
	}
	p := pods[int(lb.next.Add(1))%len(pods)]
	port := lb.svc.Spec.Ports[0].TargetPort
	num, ok := portNumber(p.w.template.Spec.Containers[0], port.StrVal, port.IntVal)
	if !ok {
		lb.refused.Add(1)
		return
	}
	out, err := net.DialTimeout("tcp", net.JoinHostPort(p.ip, fmt.Sprint(num)), 2*time.Second)
	if err != nil {
		lb.refused.Add(1)
		return
	}
	defer out.Close()
	lb.accepted.Add(1)
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(out, in); closeWrite(out); done <- struct{}{} }()
	go func() { _, _ = io.Copy(in, out); closeWrite(in); done <- struct{}{} }()
	<-done
	<-done
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}
