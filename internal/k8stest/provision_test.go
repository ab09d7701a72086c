package k8stest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// apiPKI is what docs/deploy.md has an operator make for the api's HTTPS:
// a CA (Secret drover-api-ca) and a certificate for the api's Service
// name signed by it (Secret drover-api-tls).
type apiPKI struct {
	caPEM, certPEM, keyPEM string
	pool                   *x509.CertPool
	serverName             string
}

// newAPIPKI makes a CA and a server certificate for name (and its
// name.NAMESPACE.svc forms, as a cluster's Service DNS has them).
func newAPIPKI(t *testing.T, name string) *apiPKI {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "drover-api-ca (k8stest)"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name},
		DNSNames:  []string{name, name + ".drover-dev.svc", name + ".drover-dev.svc.cluster.local"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	p := &apiPKI{
		caPEM:      string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})),
		certPEM:    string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		keyPEM:     string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})),
		pool:       x509.NewCertPool(),
		serverName: name,
	}
	p.pool.AddCert(ca)
	return p
}

// provisionAPI does what docs/deploy.md's step 7 and 5 have the operator
// do, against the played api pod over HTTPS (its certificate checked
// against the CA, for the Service name): read the first admin key from
// the api's volume, make a follower operator and its key, and import the
// devices of registry (a registry file). It returns the follower's key.
func provisionAPI(t *testing.T, ctx context.Context, c *cluster, api *pod, pki *apiPKI, registry []byte) string {
	t.Helper()
	admin, err := os.ReadFile(filepath.Join(c.volumePath("drover-api-data"), "api", "api-admin-key"))
	if err != nil {
		t.Fatalf("the api's first admin key: %v", err)
	}
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pki.pool, ServerName: pki.serverName, MinVersion: tls.VersionTLS12},
	}}
	base := "https://" + net.JoinHostPort(api.ip, "8090")
	call := func(path string, contentType string, body []byte, out any) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+path, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(admin)))
		req.Header.Set("Content-Type", contentType)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("POST %s over HTTPS (the api's certificate checked against its CA): %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode/100 != 2 {
			t.Fatalf("POST %s: %s: %s", path, resp.Status, b)
		}
		if out != nil {
			if err := json.Unmarshal(b, out); err != nil {
				t.Fatalf("POST %s: %v (%s)", path, err, b)
			}
		}
	}
	var op struct {
		ID string `json:"id"`
	}
	call("/v1/operators", "application/json", []byte(`{"name": "followers", "role": "follower", "fleets": ["*"]}`), &op)
	var key struct {
		Key string `json:"key"`
	}
	call("/v1/operators/"+op.ID+"/keys", "application/json", []byte(`{"name": "k8stest"}`), &key)
	var imported struct {
		Created int `json:"created"`
	}
	call("/v1/imports/devices?create_missing=true", "application/json", registry, &imported)
	if key.Key == "" || imported.Created == 0 {
		t.Fatalf("provisioning: follower key %q, %d devices imported", key.Key, imported.Created)
	}
	c.logf("api provisioned over HTTPS: a follower key, %d devices registered", imported.Created)
	return fmt.Sprint(key.Key)
}
