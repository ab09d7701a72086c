package clusterlink

import (
	"crypto"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"math/big"
	"time"
)

// What a cluster key becomes. Changing any of these changes every derived
// authority: peers of different versions would no longer trust each other.
const (
	hkdfSalt = "drover cluster-link v1"
	hkdfInfo = "ed25519 certificate authority"
	// dnsSuffix names roles in certificates: a router's leaf is valid for
	// router.drover.internal, and a client dialling a router checks that
	// name whatever address it dialled (.internal is reserved for private
	// use and never resolves on the Internet).
	dnsSuffix = ".drover.internal"
)

// Fixed validity of the derived authorities: they are rotated by rotating
// the key, not by time, and must be byte-identical in every process.
var (
	caNotBefore = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	caNotAfter  = time.Date(2099, 12, 31, 0, 0, 0, 0, time.UTC)
)

// authority is the certificate authority derived from one cluster key.
type authority struct {
	fp   string // hex of the first 8 bytes of SHA-256(public key): safe to log
	key  ed25519.PrivateKey
	cert *x509.Certificate
	der  []byte
}

// deriveAuthority derives the Ed25519 CA of a cluster key with
// HKDF-SHA256, and its self-signed certificate. Both are deterministic: the
// same key gives the same authority in every process, so nothing but the
// key is ever distributed.
func deriveAuthority(k Key) (*authority, error) {
	seed, err := hkdf.Key(sha256.New, k[:], []byte(hkdfSalt), hkdfInfo, ed25519.SeedSize)
	if err != nil {
		return nil, fmt.Errorf("derive authority: %w", err)
	}
	priv := ed25519.NewKeyFromSeed(seed)
	clear(seed)
	pub := priv.Public().(ed25519.PublicKey)
	sum := sha256.Sum256(pub)
	a := &authority{fp: hex.EncodeToString(sum[:8]), key: priv}
	tmpl := a.template(sum)
	a.der, err = x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		return nil, fmt.Errorf("derive authority certificate: %w", err)
	}
	if a.cert, err = x509.ParseCertificate(a.der); err != nil {
		return nil, fmt.Errorf("derive authority certificate: %w", err)
	}
	return a, nil
}

// template is the authority's certificate: the same subject and key
// identifier in its self-signed form and in every cross-certificate.
func (a *authority) template(sum [32]byte) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber:          new(big.Int).SetBytes(sum[:8]),
		Subject:               pkix.Name{Organization: []string{"drover"}, CommonName: "drover cluster CA " + a.fp},
		NotBefore:             caNotBefore,
		NotAfter:              caNotAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1, // a cross-certificate sits between a root and a leaf
		SubjectKeyId:          sum[:20],
	}
}

// crossCertify returns a certificate of a's key and name issued by by: a
// peer that trusts only by's key builds the chain leaf → a (issued by by) →
// by, so that a process signing with a new key is trusted by processes
// that do not know it yet (a rotation in progress).
func (a *authority) crossCertify(by *authority) ([]byte, error) {
	pub := a.key.Public().(ed25519.PublicKey)
	sum := sha256.Sum256(pub)
	tmpl := a.template(sum)
	bsum := sha256.Sum256(by.key.Public().(ed25519.PublicKey))
	tmpl.SerialNumber = new(big.Int).SetBytes(append(append([]byte{}, sum[:8]...), bsum[:8]...))
	der, err := x509.CreateCertificate(rand.Reader, tmpl, by.cert, pub, by.key)
	if err != nil {
		return nil, fmt.Errorf("cross-certify authority %s by %s: %w", a.fp, by.fp, err)
	}
	return der, nil
}

// mintLeaf makes a fresh key pair and a certificate for it, issued by
// authorities[0], naming role (in the DNS name peers verify) and id (in
// the common name, for logs), valid from an hour ago (clock skew) for
// lifetime. The chain carries a cross-certificate of the issuer by every
// other authority.
func mintLeaf(authorities []*authority, role Role, id string, now time.Time, lifetime time.Duration) (*tls.Certificate, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("mint certificate: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("mint certificate: %w", err)
	}
	issuer := authorities[0]
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{Organization: []string{"drover"}, CommonName: string(role) + "/" + id},
		DNSNames:     []string{role.dnsName()},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(lifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer.cert, pub, issuer.key)
	if err != nil {
		return nil, fmt.Errorf("mint certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("mint certificate: %w", err)
	}
	chain := [][]byte{der}
	for _, other := range authorities[1:] {
		cross, err := issuer.crossCertify(other)
		if err != nil {
			return nil, err
		}
		chain = append(chain, cross)
	}
	return &tls.Certificate{Certificate: chain, PrivateKey: crypto.Signer(priv), Leaf: leaf}, nil
}

// keyring is what a set of keys gives: the authorities (the first signs)
// and the pool of every one of them, which peers' chains must reach.
type keyring struct {
	authorities []*authority
	pool        *x509.CertPool
}

func newKeyring(keys []Key) (*keyring, error) {
	kr := &keyring{pool: x509.NewCertPool()}
	for _, k := range keys {
		a, err := deriveAuthority(k)
		if err != nil {
			return nil, err
		}
		kr.authorities = append(kr.authorities, a)
		kr.pool.AddCert(a.cert)
	}
	return kr, nil
}

// fingerprints names the authorities for logs, current first.
func (kr *keyring) fingerprints() []string {
	fps := make([]string, len(kr.authorities))
	for i, a := range kr.authorities {
		fps[i] = a.fp
	}
	return fps
}
