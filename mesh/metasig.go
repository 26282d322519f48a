package mesh

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
)

// MetaSigVersion is the format of Meta.Sig: the signed bytes are
// metaSigDomain, 0, the node name, 0, its advertised address and port
// (netip.AddrPort.String), 0, then the metadata's JSON exactly as sent up
// to the field "sg": the wire form is those bytes without their closing
// brace followed by `,"sg":"<base64 signature>"}`. Signing the bytes as
// sent (not a re-encoding) covers fields a receiver does not know.
const MetaSigVersion = 1

const metaSigDomain = "mesh node metadata signature v1"

// sigOverhead is what the signature adds to the encoded metadata.
var sigOverhead = len(`,"sg":""`) + base64.StdEncoding.EncodedLen(ed25519.SignatureSize)

func signedMetaBytes(name string, addr netip.AddrPort, body []byte) []byte {
	var b bytes.Buffer
	b.WriteString(metaSigDomain)
	b.WriteByte(0)
	b.WriteString(name)
	b.WriteByte(0)
	b.WriteString(addr.String())
	b.WriteByte(0)
	b.Write(body)
	return b.Bytes()
}

// SignMeta returns the wire form of m signed by key for the node name
// advertised at addr. m.SignKey is set from key.
func SignMeta(m Meta, key ed25519.PrivateKey, name string, addr netip.AddrPort) ([]byte, error) {
	m.SignKey = base64.StdEncoding.EncodeToString(key.Public().(ed25519.PublicKey))
	m.SigVersion = MetaSigVersion
	m.Sig = ""
	body, err := m.Encode()
	if err != nil {
		return nil, err
	}
	sig := ed25519.Sign(key, signedMetaBytes(name, addr, body))
	out := append(bytes.Clone(body[:len(body)-1]), `,"sg":"`...)
	out = append(out, base64.StdEncoding.EncodeToString(sig)...)
	out = append(out, `"}`...)
	if len(out) > MetaLimit {
		return nil, fmt.Errorf("signed node metadata is %d bytes, more than memberlist's limit of %d", len(out), MetaLimit)
	}
	return out, nil
}

// Reasons a member's metadata is refused; each is a label of the refusal
// metric and the start of its status problem.
const (
	RefusedBadSignature = "bad-signature"
	RefusedOtherKey     = "other-identity"
	RefusedUnsigned     = "unsigned"
	RefusedTableFull    = "binding-table-full"
)

// RefusedReasons lists every reason, for the metric's labels.
var RefusedReasons = []string{RefusedBadSignature, RefusedOtherKey, RefusedUnsigned, RefusedTableFull}

// errBadSignature is every failure to verify a signed metadata.
var errBadSignature = errors.New("metadata signature does not verify")

// VerifyMeta checks the signature of metadata b received for the node name
// at addr. It returns the decoded metadata and the signing public key, or
// an empty key when b carries no signature at all (a node of the previous
// release).
func VerifyMeta(b []byte, name string, addr netip.AddrPort) (Meta, ed25519.PublicKey, error) {
	m, err := DecodeMeta(b)
	if err != nil {
		return Meta{}, nil, err
	}
	if m.SignKey == "" && m.Sig == "" {
		return m, nil, nil
	}
	if m.SigVersion != MetaSigVersion {
		return Meta{}, nil, fmt.Errorf("%w: signature version %d, this release verifies %d", errBadSignature, m.SigVersion, MetaSigVersion)
	}
	pub, err := base64.StdEncoding.DecodeString(m.SignKey)
	if err != nil || len(pub) != ed25519.PublicKeySize {
		return Meta{}, nil, fmt.Errorf("%w: signing key is not a base64 ed25519 public key", errBadSignature)
	}
	sig, err := base64.StdEncoding.DecodeString(m.Sig)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return Meta{}, nil, fmt.Errorf("%w: signature is not %d base64 bytes", errBadSignature, ed25519.SignatureSize)
	}
	suffix := `,"sg":"` + m.Sig + `"}`
	if !bytes.HasSuffix(b, []byte(suffix)) {
		return Meta{}, nil, fmt.Errorf("%w: the signature is not the last field", errBadSignature)
	}
	body := append(bytes.Clone(b[:len(b)-len(suffix)]), '}')
	if !ed25519.Verify(pub, signedMetaBytes(name, addr, body), sig) {
		return Meta{}, nil, errBadSignature
	}
	return m, ed25519.PublicKey(pub), nil
}
