package daemon

import (
	"crypto/ed25519"
	"fmt"
	"time"

	"github.com/meshnet/mesh/crypto"
	"github.com/meshnet/mesh/ipam"
	"github.com/meshnet/mesh/mesh"
)

// ipamIdentities is ipam.Identities: the node's signing key signs its IPAM
// infos, and the membership's name bindings verify those of the others
// (docs/ipam.md, "Signed peer infos").
type ipamIdentities struct {
	self    string
	key     ed25519.PrivateKey
	members *mesh.Membership
}

func (i *ipamIdentities) Sign(msg []byte) []byte { return ed25519.Sign(i.key, msg) }

func (i *ipamIdentities) Verify(name string, msg, sig []byte) error {
	pub := i.members.BoundIdentity(name)
	if name == i.self {
		// The binding table holds the others only.
		pub = i.key.Public().(ed25519.PublicKey)
	}
	if pub == nil {
		return fmt.Errorf("%w: %s", ipam.ErrUnknownSigner, name)
	}
	if !ed25519.Verify(pub, msg, sig) {
		return fmt.Errorf("%w: not by the identity bound to %s", ipam.ErrBadSignature, name)
	}
	return nil
}

// SendsUnsigned: a live member whose (signed, for a bound name) metadata
// does not say it signs its infos.
func (i *ipamIdentities) SendsUnsigned(name string) bool {
	m, ok := i.members.Member(name)
	return ok && m.State.Live() && m.Meta.IPAMInfos < mesh.IPAMInfosSigned
}

// ReadsSigned: a live member that says it reads signed states, whether it
// sends them yet or not.
func (i *ipamIdentities) ReadsSigned(name string) bool {
	m, ok := i.members.Member(name)
	return ok && m.State.Live() && m.Meta.IPAMInfos >= mesh.IPAMInfosRead
}

// signedInfosGrace is how long a member that is gone still holds back
// states with signatures when it cannot read them: a node of the previous
// release that restarts or reboots during an upgrade reads the states it
// is sent when it is back. One gone for longer does not hold the mesh
// back; if it comes back it must be upgraded (docs/ipam.md).
const signedInfosGrace = 10 * time.Minute

// AllRead: another member is live, and every member, live or gone within
// signedInfosGrace, reads states with signatures.
func (i *ipamIdentities) AllRead() bool {
	now := time.Now()
	live := 0
	for _, m := range i.members.Members() {
		if m.Self || (!m.State.Live() && now.Sub(m.Since) > signedInfosGrace) {
			continue
		}
		if m.Meta.IPAMInfos < mesh.IPAMInfosRead {
			return false
		}
		if m.State.Live() {
			live++
		}
	}
	return live > 0
}

// announceSignedInfos tells the others, in the node's metadata, once every
// allocator (one per family) signs its infos: from then on they refuse
// unsigned infos of this node.
func (d *Daemon) announceSignedInfos() {
	want := mesh.IPAMInfosSigned
	for _, a := range d.allocators() {
		if !a.SignsInfos() {
			want = mesh.IPAMInfosRead
		}
	}
	changed := false
	meta := d.self.update(func(_ *crypto.PrivateKey, m *mesh.Meta) {
		if m.IPAMInfos != want {
			m.IPAMInfos, changed = want, true
		}
	})
	if !changed {
		return
	}
	if err := d.members.UpdateMeta(meta); err != nil {
		d.log.Warn("failed to announce that this node signs its IPAM infos", "error", err)
		return
	}
	d.log.Info("announced that this node signs its IPAM infos")
}
