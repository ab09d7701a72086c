package auth

import (
	"flag"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DefaultLimitConfig is the failure limit of an edge's client addresses:
// 30 failures a minute block an address for 30 s, doubling with each
// repeat up to 10 min; 65,536 addresses remembered (about 15 MiB at
// most). 30 leaves room for a few misconfigured devices behind one
// carrier-grade NAT before the address, and every device behind it, waits.
func DefaultLimitConfig() LimitConfig {
	return LimitConfig{Failures: 30, Window: time.Minute, Block: 30 * time.Second, MaxBlock: 10 * time.Minute, MaxKeys: 1 << 16}
}

// RegisterFlags defines -auth-failures, -auth-window, -auth-block,
// -auth-block-max and -auth-keys in fs, bound to c; of names what a key is
// ("client address").
func (c *LimitConfig) RegisterFlags(fs *flag.FlagSet, of string) {
	fs.IntVar(&c.Failures, "auth-failures", c.Failures,
		fmt.Sprintf("failed authentications of one %s within -auth-window after which it is answered 429 with a Retry-After, without the work (`number`); 0: no limit", of))
	fs.DurationVar(&c.Window, "auth-window", c.Window,
		"period over which failed authentications are counted (`duration`)")
	fs.DurationVar(&c.Block, "auth-block", c.Block,
		"how long a key that reached the failure limit is refused (`duration`); each repeat doubles it, up to -auth-block-max")
	fs.DurationVar(&c.MaxBlock, "auth-block-max", c.MaxBlock,
		"longest refusal after repeated failures (`duration`)")
	fs.IntVar(&c.MaxKeys, "auth-keys", c.MaxKeys,
		"most keys (addresses, ids) whose failures are remembered, the least recently failed forgotten first (`number`); bounds the memory at ~250 bytes each")
}

// RegisterMetrics registers, under namespace (drover_frontend), what l
// does: <namespace>_auth_blocks_total, _auth_limiter_keys and
// _auth_limiter_evictions_total, each labelled scope (what l counts:
// source, device).
func RegisterMetrics(reg prometheus.Registerer, namespace, scope string, l *Limiter) error {
	labels := prometheus.Labels{"scope": scope}
	for _, c := range []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: namespace + "_auth_blocks_total", ConstLabels: labels,
			Help: "Times a key (scope: client address or device id) reached the authentication failure limit and was blocked.",
		}, func() float64 { return float64(l.Blocks()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: namespace + "_auth_limiter_keys", ConstLabels: labels,
			Help: "Keys whose recent authentication failures are remembered (bounded by -auth-keys).",
		}, func() float64 { return float64(l.Len()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: namespace + "_auth_limiter_evictions_total", ConstLabels: labels,
			Help: "Keys forgotten to keep the failure limiter within -auth-keys; a steady rise means more failing keys than it holds.",
		}, func() float64 { return float64(l.Evictions()) }),
	} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register auth limiter metrics: %w", err)
		}
	}
	return nil
}
