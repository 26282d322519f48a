package daemon

import (
	"crypto/ed25519"
	"fmt"
	"time"

	"github.com/meshnet/mesh/api"
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

// signedInfosSettle is how long the membership must be unchanged before
// this node switches to signed states. A node that joins learns the
// members one by one within milliseconds (memberlist's push/pull): without
// it, a node restarted with the new binary switched, for good, on seeing
// the first upgraded member, before it saw a member of the previous
// release learnt a moment later.
const signedInfosSettle = 5 * time.Second

// AllRead: another member is live, every member, live or gone within
// signedInfosGrace, reads states with signatures, and none joined or came
// back within signedInfosSettle.
func (i *ipamIdentities) AllRead() bool {
	return signedSwitchOf(i.members.Members(), time.Now()).ready()
}

// signedSwitch is one snapshot of the membership as this node's switch to
// signed states sees it: the one rule for AllRead, for what status says
// holds the switch back, and for the members it names as unable to read
// them once it is made.
type signedSwitch struct {
	// holders are the other members, live or gone within
	// signedInfosGrace, that do not say they read signed states.
	holders []mesh.Member
	// live counts the other live members.
	live int
	// settling: one of the live ones joined or came back within
	// signedInfosSettle.
	settling bool
}

func signedSwitchOf(members []mesh.Member, now time.Time) signedSwitch {
	return readSwitchOf(members, now, func(m mesh.Meta) bool { return m.IPAMInfos >= mesh.IPAMInfosRead })
}

// deltasOn says whether this node announces its IPAM ring changes by
// deltas (docs/ipam.md, "Deltas"): while another member is live and
// every member, live or gone within signedInfosGrace, reads them; else
// by whole states, which every release reads. Unlike the switch to signed
// states it is decided anew at every change, so it does not wait for the
// membership to settle (a join, when most ring changes happen, would
// always find it settling): a member of the previous release not learnt
// yet drops a delta unread and learns the change by push/pull.
func deltasOn(members []mesh.Member, now time.Time) bool {
	return readSwitchOf(members, now, func(m mesh.Meta) bool { return m.IPAMDeltas >= mesh.IPAMDeltasVersion }).allRead()
}

// digestsOn says whether this node's IPAM push/pull exchanges may carry
// state digests (docs/ipam.md, "Digests at rest"): while another member is
// live and every member, live or gone within signedInfosGrace, reads them.
// Decided at every exchange, as deltasOn: a member of the previous release
// not learnt yet refuses one digest as a corrupt state and gets the whole
// state at the next exchange that knows it.
func digestsOn(members []mesh.Member, now time.Time) bool {
	return readSwitchOf(members, now, func(m mesh.Meta) bool { return m.IPAMDeltas >= mesh.IPAMDigestsVersion }).allRead()
}

// joiningOn says whether a peer of this node that joins a running mesh
// with automatic reclaim on starts as a joiner (docs/ipam.md, "Joining as
// a voter"): while another member is live and every member, live or gone
// within signedInfosGrace, reads the Joining flag. Decided when the
// allocator adopts the ring, which a node does as it joins, so like
// deltasOn it does not wait for the membership to settle.
func joiningOn(members []mesh.Member, now time.Time) bool {
	return readSwitchOf(members, now, func(m mesh.Meta) bool { return m.IPAMJoining >= mesh.IPAMJoiningVersion }).allRead()
}

// ownedOn says whether this node's peers may list the space they own in
// their infos (docs/ipam.md, "Signed ring transfers"; the allocator also
// waits until it sends signed states): while another member is live,
// every member, live or gone within signedInfosGrace, reads the list, and
// the membership has settled, as for signed states. From the first true
// on the allocator lists it for good: a process that joins saying it runs
// an earlier release must not turn the check off.
func ownedOn(members []mesh.Member, now time.Time) bool {
	return readSwitchOf(members, now, readsOwned).ready()
}

// readsOwned says whether a member's metadata says it reads the owned
// spans of peer infos.
func readsOwned(m mesh.Meta) bool { return m.IPAMJoining >= mesh.IPAMOwnedVersion }

// acksOn says whether this node's peers may list the tombstones they hold
// in their infos and drop those every peer acknowledged (docs/ipam.md,
// "Dropping tombstones"): as ownedOn, for members that read the lists of
// acknowledgements. From the first true on the allocator lists them for
// good.
func acksOn(members []mesh.Member, now time.Time) bool {
	return readSwitchOf(members, now, readsAcks).ready()
}

// readsAcks says whether a member's metadata says it reads the
// acknowledged removals of peer infos.
func readsAcks(m mesh.Meta) bool { return m.IPAMJoining >= mesh.IPAMAcksVersion }

// vouchesOn says whether this node's peers may list the silent peers they
// vouch for and mark their space as moved by a reclaim only with a
// majority's vouches (docs/ipam.md, "Vouched reclaims"): as ownedOn, for
// members that read the vouches. From the first true on the allocator
// lists them for good.
func vouchesOn(members []mesh.Member, now time.Time) bool {
	return readSwitchOf(members, now, readsVouches).ready()
}

// readsVouches says whether a member's metadata says it reads the vouches
// of peer infos.
func readsVouches(m mesh.Meta) bool { return m.IPAMJoining >= mesh.IPAMVouchesVersion }

// listProblems names, once this node lists its space (owned), its
// acknowledged removals (acks) or its vouches (vouches) in its infos, each
// live member that does not say it reads the newest of these lists: it
// takes the list for the next
// field of an info and refuses every state it is sent, as a member that
// cannot read signed states does (signedSwitch.status, which names one
// whose metadata does not parse). One per member, bounded as the
// membership is.
func listProblems(members []mesh.Member, now time.Time, owned, acks, vouches bool) []string {
	reads, what, section := readsOwned, "the space peers list", "Signed ring transfers"
	switch {
	case vouches:
		reads, what, section = readsVouches, "the vouches peers give", "Vouched reclaims"
	case acks:
		reads, what, section = readsAcks, "the lists peers keep", "Dropping tombstones"
	case !owned:
		return nil
	}
	var out []string
	for _, m := range readSwitchOf(members, now, reads).holders {
		if m.State.Live() && m.MetaErr == nil && m.Meta.IPAMInfos >= mesh.IPAMInfosRead {
			out = append(out, fmt.Sprintf("member %s runs a release that cannot read %s in their IPAM infos: it refuses the states this node sends and learns no ring change; upgrade it (%q in docs/ipam.md)", m.Name, what, section))
		}
	}
	return out
}

// readSwitchOf is the snapshot for a format the members read when reads
// says so.
func readSwitchOf(members []mesh.Member, now time.Time, reads func(mesh.Meta) bool) signedSwitch {
	var s signedSwitch
	for _, m := range members {
		if m.Self || (!m.State.Live() && now.Sub(m.Since) > signedInfosGrace) {
			continue
		}
		if m.State.Live() {
			s.live++
		}
		if !reads(m.Meta) {
			s.holders = append(s.holders, m)
		}
		// Only a member learnt or back a moment ago hints at others not
		// learnt yet; one that left does not, and counting it would let
		// churn put the switch off.
		if m.State.Live() && now.Sub(m.Since) < signedInfosSettle {
			s.settling = true
		}
	}
	return s
}

// allRead: another member is live and none holds the switch back.
func (s signedSwitch) allRead() bool { return s.live > 0 && len(s.holders) == 0 }

// ready: allRead, and the membership has settled.
func (s signedSwitch) ready() bool { return s.allRead() && !s.settling }

// status is the switch as `mesh status ipam` shows it, sending being
// whether the allocator sends signed states; problems name, once it does,
// each live member that cannot read them: it refuses every state it is
// sent and learns no ring change (docs/ipam.md). One per member, so they
// are bounded as the membership is, and a member gone is no longer named.
// A member whose metadata does not parse says nothing of signed states: it
// is named as one that may not read them.
func (s signedSwitch) status(sending bool) (*api.SignedStates, []string) {
	out := &api.SignedStates{Sending: sending, Settling: !sending && s.settling}
	var problems []string
	for _, m := range s.holders {
		switch {
		case !sending:
			reason := api.HolderPreviousRelease
			if m.MetaErr != nil {
				reason = api.HolderBadMeta
			}
			out.WaitingFor = append(out.WaitingFor, api.SignedStatesHolder{Name: m.Name, State: m.State, Reason: reason})
		case m.State.Live() && m.MetaErr != nil:
			problems = append(problems, fmt.Sprintf("member %s's gossip metadata does not parse, so it does not say it reads signed IPAM states: if it cannot, it refuses the states this node sends and learns no ring change; see the daemon's log (\"Signed peer infos\" in docs/ipam.md)", m.Name))
		case m.State.Live():
			problems = append(problems, fmt.Sprintf("member %s runs a release that cannot read signed IPAM states: it refuses the states this node sends and learns no ring change; upgrade it (\"Signed peer infos\" in docs/ipam.md)", m.Name))
		}
	}
	return out, problems
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
	if d.announceMeta("that this node signs its IPAM infos", func(m *mesh.Meta) bool {
		changed := m.IPAMInfos != want
		m.IPAMInfos = want
		return changed
	}) {
		d.log.Info("announced that this node signs its IPAM infos")
	}
}

// announceMeta changes this node's metadata with change, which says
// whether it changed anything, and gossips it if so; what names the
// change in the warning of a failure. It says whether the change was
// announced.
func (d *Daemon) announceMeta(what string, change func(m *mesh.Meta) bool) bool {
	changed := false
	meta := d.self.update(func(_ *crypto.PrivateKey, m *mesh.Meta) { changed = change(m) })
	if !changed {
		return false
	}
	if err := d.members.UpdateMeta(meta); err != nil {
		d.log.Warn("failed to announce "+what, "error", err)
		return false
	}
	return true
}
