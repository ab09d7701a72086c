package daemon

import "testing"

func TestValidateListenAddr(t *testing.T) {
	for _, ok := range []string{":8080", "127.0.0.1:0", "[::1]:9180", "0.0.0.0:65535"} {
		if err := ValidateListenAddr(ok); err != nil {
			t.Errorf("ValidateListenAddr(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "8080", "localhost", ":http", ":65536", ":-1", "tcp://:8080"} {
		if err := ValidateListenAddr(bad); err == nil {
			t.Errorf("ValidateListenAddr(%q) accepted", bad)
		}
	}
}

func TestValidateEndpoint(t *testing.T) {
	for _, tc := range []struct {
		ep   string
		bind bool
		ok   bool
	}{
		{"tcp://*:5555", true, true},
		{"tcp://127.0.0.1:0", true, true},
		{"tcp://:*", true, true},
		{"tcp://router-0.router:5555", false, true},
		{"tcp://[::1]:5555", false, true},
		{"ipc:///run/drover/router.sock", false, true},
		{"inproc://router", true, true},
		{"tcp://*:5555", false, false},      // connect needs a host
		{"tcp://127.0.0.1:0", false, false}, // and a port
		{"tcp://127.0.0.1", false, false},
		{"tcp://127.0.0.1:99999", true, false},
		{"127.0.0.1:5555", false, false},
		{"ws://127.0.0.1:5555", false, false},
		{"ipc://", true, false},
		{"dns+tcp://drover-router:5555", false, true}, // every address of the name
		{"dns+tcp://drover-router:5555", true, false}, // never bound
		{"dns+tcp://*:5555", false, false},
		{"dns+tcp://drover-router", false, false},
	} {
		err := ValidateEndpoint(tc.ep, tc.bind)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateEndpoint(%q, bind=%v) = %v, want ok=%v", tc.ep, tc.bind, err, tc.ok)
		}
	}
}

func TestValidateEndpoints(t *testing.T) {
	if err := ValidateEndpoints([]string{"tcp://a:5555", "tcp://b:5555"}); err != nil {
		t.Errorf("two routers: %v", err)
	}
	for name, eps := range map[string][]string{
		"empty":     nil,
		"duplicate": {"tcp://a:5555", "tcp://a:5555"},
		"bad item":  {"tcp://a:5555", "a:5555"},
	} {
		if err := ValidateEndpoints(eps); err == nil {
			t.Errorf("%s: ValidateEndpoints(%q) accepted", name, eps)
		}
	}
}

func TestValidateID(t *testing.T) {
	for _, ok := range []string{"frontend-0", "router_1.eu", "a", "LAKE"} {
		if err := ValidateID(ok); err != nil {
			t.Errorf("ValidateID(%q) = %v", ok, err)
		}
	}
	long := make([]byte, 254)
	for i := range long {
		long[i] = 'a'
	}
	for _, bad := range []string{"", "-x", ".hidden", "a/b", "a b", "é", string(long)} {
		if err := ValidateID(bad); err == nil {
			t.Errorf("ValidateID(%q) accepted", bad)
		}
	}
	if id := DefaultID("fallback-x"); ValidateID(id) != nil {
		t.Errorf("DefaultID returned an invalid ID %q", id)
	}
}
