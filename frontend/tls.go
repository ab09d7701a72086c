package frontend

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/drover-telemetry/drover/internal/registry"
)

// How devices authenticate (Config.DeviceAuth, -device-auth).
const (
	// DeviceAuthToken: a device id and its token (X-Drover-Device and a
	// bearer token, or the query parameters), checked against the
	// registry. The default.
	DeviceAuthToken = "token"
	// DeviceAuthCert: a client certificate issued by a CA of
	// -tls-client-ca, whose subject's common name is the device id, as
	// vehicle makers' own telemetry servers do. The TLS handshake refuses a
	// device without one; no token is asked for. The device must be in the
	// registry (removing it there refuses it, whatever its certificate).
	DeviceAuthCert = "cert"
	// DeviceAuthCertOrToken: a certificate when the device presents one,
	// else the token: for a fleet moving from tokens to certificates.
	DeviceAuthCertOrToken = "cert-or-token"
)

// Refusal reasons of certificate authentication.
const (
	reasonCertMismatch = "cert_mismatch" // 401: X-Drover-Device names another device than the certificate
	reasonAcceptRate   = "accept_rate"   // 503: over the accept rate
	reasonFlapping     = "flapping"      // 429: the device reconnects too often
)

// validateDeviceAuth checks -device-auth against the TLS configuration.
func (c Config) validateDeviceAuth() error {
	switch c.DeviceAuth {
	case DeviceAuthToken:
		if c.TLS.ClientCAFile != "" {
			return errors.New("tls-client-ca: client certificates are asked for only with -device-auth cert or cert-or-token")
		}
	case DeviceAuthCert, DeviceAuthCertOrToken:
		if !c.TLS.Enabled() || c.TLS.ClientCAFile == "" {
			return fmt.Errorf("device-auth: %s needs -tls-cert, -tls-key and -tls-client-ca (the CA of device certificates)", c.DeviceAuth)
		}
	default:
		return fmt.Errorf("device-auth: %q: want %s, %s or %s", c.DeviceAuth, DeviceAuthToken, DeviceAuthCert, DeviceAuthCertOrToken)
	}
	return nil
}

// clientAuth is how the TLS handshake asks for a certificate.
func (c Config) clientAuth() tls.ClientAuthType {
	switch c.DeviceAuth {
	case DeviceAuthCert:
		return tls.RequireAndVerifyClientCert
	case DeviceAuthCertOrToken:
		return tls.VerifyClientCertIfGiven
	}
	return tls.NoClientCert
}

// certDevice returns the device a request's client certificate names: the
// common name of a certificate the handshake verified against
// -tls-client-ca, "" when there is none.
func certDevice(r *http.Request) string {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.PeerCertificates) == 0 {
		return ""
	}
	return r.TLS.PeerCertificates[0].Subject.CommonName
}

// authenticate checks a device against reg at now: by its certificate
// when it presented one (certID, already verified by the handshake: the
// device must only be registered and active), else by its token
// (registry.Authorize). A certificate's grant is the zero Grant: nothing
// expires with it.
func authenticate(reg *registry.Registry, id, token, certID string, now time.Time) (registry.Grant, error) {
	if certID != "" {
		return registry.Grant{}, certAllowed(reg, id)
	}
	_, g, err := reg.Authorize(id, token, now)
	return g, err
}

// certAllowed reports whether reg lets the device id connect with a
// verified certificate: it is registered and active. The errors are those
// of registry.Authorize, so that refusals and closes read alike.
func certAllowed(reg *registry.Registry, id string) error {
	d, ok := reg.Lookup(id)
	if !ok {
		return registry.ErrUnknownDevice
	}
	switch d.State {
	case registry.StateActive:
		return nil
	case registry.StateSuspended:
		return registry.ErrSuspended
	case registry.StateDecommissioned:
		return registry.ErrDecommissioned
	}
	return registry.ErrUnknownState
}

// scheme is the device URL scheme the frontend serves.
func (f *Frontend) scheme() string {
	if f.tls != nil {
		return "wss"
	}
	return "ws"
}
