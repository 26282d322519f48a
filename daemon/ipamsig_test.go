package daemon

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/internal/testnet"
	"github.com/meshnet/mesh/ipam"
	"github.com/meshnet/mesh/mesh"
)

// signedMember starts a membership named name on loopback that signs its
// metadata with key (nil: unsigned, as the previous release) and says ii
// of signed IPAM infos.
func signedMember(t *testing.T, name string, key ed25519.PrivateKey, ii int, targets ...string) (*mesh.Membership, mesh.Meta) {
	t.Helper()
	cfg := mesh.DefaultConfig()
	cfg.Name = name
	cfg.Meta = mesh.Meta{PeerID: fmt.Sprintf("%032x", len(name)), IPAMInfos: ii}
	cfg.SigningKey = key
	cfg.BindAddr = netip.MustParseAddr("127.0.0.1")
	cfg.AdvertiseAddr = cfg.BindAddr
	cfg.Port = 0
	cfg.Targets = targets
	cfg.RetryMin, cfg.RetryMax, cfg.RejoinSpread = 100*time.Millisecond, 500*time.Millisecond, 500*time.Millisecond
	cfg.RememberedFile = filepath.Join(t.TempDir(), "peers.json")
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	m, err := mesh.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	m.Start()
	return m, cfg.Meta
}

func newKey(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestIPAMIdentities: the daemon's ipam.Identities on real memberships
// over loopback. Signatures verify against this node's own key and the
// identity bound to a name; what a member says of signed infos in its
// metadata decides AllRead, SendsUnsigned and ReadsSigned; a member of the
// previous release holds signed states back, also for a while after it
// left.
func TestIPAMIdentities(t *testing.T) {
	ka, kb := newKey(t), newKey(t)
	a, _ := signedMember(t, "a", ka, mesh.IPAMInfosRead)
	b, metaB := signedMember(t, "b", kb, mesh.IPAMInfosRead, a.LocalAddr().String())
	ids := &ipamIdentities{self: "a", key: ka, members: a}
	if ids.AllRead() {
		t.Fatal("AllRead with no other member known")
	}
	testnet.Eventually(t, 20*time.Second, 50*time.Millisecond, func() error {
		if !ids.AllRead() {
			return fmt.Errorf("AllRead false with b live and reading: %+v", a.Members())
		}
		return nil
	})
	if !ids.SendsUnsigned("b") || !ids.ReadsSigned("b") {
		t.Fatal("b says it reads but does not send signed infos: SendsUnsigned and ReadsSigned must hold")
	}

	msg := []byte("an info")
	for _, tc := range []struct {
		name, signer string
		sig          []byte
		want         error
	}{
		{"by b, verified with b's bound identity", "b", ed25519.Sign(kb, msg), nil},
		{"this node's own", "a", ed25519.Sign(ka, msg), nil},
		{"b's name, another key", "b", ed25519.Sign(ka, msg), ipam.ErrBadSignature},
		{"a name bound to no identity", "nobody", ed25519.Sign(kb, msg), ipam.ErrUnknownSigner},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ids.Verify(tc.signer, msg, tc.sig)
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("Verify = %v, want %v", err, tc.want)
			}
		})
	}

	metaB.IPAMInfos = mesh.IPAMInfosSigned
	if err := b.UpdateMeta(metaB); err != nil {
		t.Fatal(err)
	}
	testnet.Eventually(t, 20*time.Second, 50*time.Millisecond, func() error {
		if ids.SendsUnsigned("b") || !ids.ReadsSigned("b") {
			return fmt.Errorf("b says it signs, but a sees it sending unsigned or not reading")
		}
		return nil
	})

	c, _ := signedMember(t, "c", nil, 0, a.LocalAddr().String())
	testnet.Eventually(t, 20*time.Second, 50*time.Millisecond, func() error {
		if ids.AllRead() {
			return fmt.Errorf("AllRead with c of the previous release live")
		}
		return nil
	})
	if !ids.SendsUnsigned("c") || ids.ReadsSigned("c") {
		t.Fatal("c of the previous release: SendsUnsigned must hold, ReadsSigned not")
	}
	if err := ids.Verify("c", msg, ed25519.Sign(kb, msg)); !errors.Is(err, ipam.ErrUnknownSigner) {
		t.Fatalf("Verify of unsigned c = %v, want ErrUnknownSigner", err)
	}
	if err := c.Leave(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	testnet.Eventually(t, 20*time.Second, 50*time.Millisecond, func() error {
		if m, ok := a.Member("c"); !ok || m.State.Live() {
			return fmt.Errorf("c still live")
		}
		return nil
	})
	if ids.AllRead() {
		t.Fatal("AllRead right after c of the previous release left: it may come back within signedInfosGrace")
	}
}

// TestSignedSwitchStatus: what status says of the switch to signed IPAM
// states, from a snapshot of the membership. Before the switch, the
// members that hold it back are named (live, or gone within
// signedInfosGrace); after it, status says yes, and each live member
// that cannot read signed states is a problem, dropped once it is gone.
func TestSignedSwitchStatus(t *testing.T) {
	now := time.Now()
	member := func(name string, state api.MemberState, ii int, since time.Duration) mesh.Member {
		return mesh.Member{Name: name, State: state, Meta: mesh.Meta{IPAMInfos: ii}, Since: now.Add(-since)}
	}
	self := mesh.Member{Name: "host1", State: api.MemberAlive, Self: true, Meta: mesh.Meta{IPAMInfos: mesh.IPAMInfosRead}}
	upgraded := member("host2", api.MemberAlive, mesh.IPAMInfosRead, time.Minute)
	signing := member("host2", api.MemberAlive, mesh.IPAMInfosSigned, time.Minute)
	old := member("host3", api.MemberAlive, 0, time.Minute)
	badMeta := member("host4", api.MemberAlive, 0, time.Minute)
	badMeta.MetaErr = errors.New("invalid character 'x' looking for beginning of value")
	cannotRead := "member host3 runs a release that cannot read signed IPAM states"
	for _, tc := range []struct {
		name         string
		members      []mesh.Member
		sending      bool
		wantReady    bool // AllRead: the allocator switches
		wantWaiting  []api.SignedStatesHolder
		wantSettling bool
		wantProblems []string // each a prefix of one problem, in order
	}{
		{name: "alone", members: []mesh.Member{self}},
		{name: "before the switch, a member of the previous release live", members: []mesh.Member{self, upgraded, old},
			wantWaiting: []api.SignedStatesHolder{{Name: "host3", State: api.MemberAlive, Reason: api.HolderPreviousRelease}}},
		{name: "before the switch, a member of the previous release gone a moment ago",
			members:     []mesh.Member{self, upgraded, member("host3", api.MemberDead, 0, signedInfosGrace/2)},
			wantWaiting: []api.SignedStatesHolder{{Name: "host3", State: api.MemberDead, Reason: api.HolderPreviousRelease}}},
		{name: "before the switch, a member whose metadata does not parse", members: []mesh.Member{self, upgraded, badMeta},
			wantWaiting: []api.SignedStatesHolder{{Name: "host4", State: api.MemberAlive, Reason: api.HolderBadMeta}}},
		{name: "every member reads signed states: the switch", members: []mesh.Member{self, upgraded, signing}, wantReady: true},
		// A node that joins learns the members one by one: it must not
		// switch on seeing the first, before it learns of a member of the
		// previous release a moment later.
		{name: "every member known reads signed states, one joined a moment ago",
			members: []mesh.Member{self, member("host2", api.MemberAlive, mesh.IPAMInfosRead, 10*time.Millisecond)}, wantSettling: true},
		// One that left reveals no member unknown yet: churn must not put
		// the switch off.
		{name: "every member reads signed states, one left a moment ago",
			members: []mesh.Member{self, upgraded, member("host5", api.MemberLeft, mesh.IPAMInfosRead, time.Second)}, wantReady: true},
		{name: "every member reads signed states, one came back a moment ago",
			members: []mesh.Member{self, upgraded, member("host5", api.MemberAlive, mesh.IPAMInfosRead, time.Second)}, wantSettling: true},
		{name: "a member of the previous release gone for longer than the grace",
			members:   []mesh.Member{self, upgraded, member("host3", api.MemberLeft, 0, signedInfosGrace+time.Minute)},
			wantReady: true},
		{name: "after the switch", members: []mesh.Member{self, signing}, sending: true, wantReady: true},
		{name: "after the switch, a member of the previous release live", members: []mesh.Member{self, signing, old}, sending: true,
			wantProblems: []string{cannotRead}},
		{name: "after the switch, a suspect member of the previous release", members: []mesh.Member{self, signing, member("host3", api.MemberSuspect, 0, time.Second)},
			sending: true, wantProblems: []string{cannotRead}},
		{name: "after the switch, the member of the previous release gone", members: []mesh.Member{self, signing, member("host3", api.MemberDead, 0, time.Second)},
			sending: true},
		{name: "after the switch, a member whose metadata does not parse", members: []mesh.Member{self, signing, badMeta},
			sending: true, wantProblems: []string{"member host4's gossip metadata does not parse"}},
		{name: "after the switch, two members that cannot read signed states: one problem each", members: []mesh.Member{self, signing, old, badMeta},
			sending: true, wantProblems: []string{cannotRead, "member host4's gossip metadata does not parse"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sw := signedSwitchOf(tc.members, now)
			if sw.ready() != tc.wantReady {
				t.Fatalf("ready = %v, want %v", sw.ready(), tc.wantReady)
			}
			st, problems := sw.status(tc.sending)
			if st.Sending != tc.sending {
				t.Fatalf("Sending = %v, want %v", st.Sending, tc.sending)
			}
			if st.Settling != tc.wantSettling {
				t.Fatalf("Settling = %v, want %v", st.Settling, tc.wantSettling)
			}
			if !slices.Equal(st.WaitingFor, tc.wantWaiting) {
				t.Fatalf("WaitingFor = %+v, want %+v", st.WaitingFor, tc.wantWaiting)
			}
			if len(problems) != len(tc.wantProblems) {
				t.Fatalf("problems %q, want %d starting with %q", problems, len(tc.wantProblems), tc.wantProblems)
			}
			for i, p := range problems {
				if !strings.HasPrefix(p, tc.wantProblems[i]) {
					t.Fatalf("problem %q, want it to start with %q", p, tc.wantProblems[i])
				}
			}
		})
	}
}

// TestIPAMStatusSignedStates: the IPAM status of a daemon on real
// memberships over loopback. Before the switch it names the member of the
// previous release that holds it back; once every member reads signed
// states it says the node sends them, and a member of the previous
// release that joins after the switch is a problem, dropped once it left.
func TestIPAMStatusSignedStates(t *testing.T) {
	status := func(t *testing.T, self string, key ed25519.PrivateKey, members *mesh.Membership) func() *api.IPAM {
		t.Helper()
		cfg := ipam.DefaultConfig()
		cfg.Self, cfg.SelfID, cfg.StateFile = self, fmt.Sprintf("%032x", len(self)), filepath.Join(t.TempDir(), "ipam.json")
		cfg.InitialPeerCount = 2
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		cfg.Identities = &ipamIdentities{self: self, key: key, members: members}
		a, err := ipam.New(cfg, nopTransport{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close() })
		d := &Daemon{ipam: a, members: members}
		return func() *api.IPAM { st, _ := d.ipamStatus(); return st }
	}
	hasProblem := func(st *api.IPAM, prefix string) bool {
		return slices.ContainsFunc(st.Problems, func(p string) bool { return strings.HasPrefix(p, prefix) })
	}

	t.Run("before the switch", func(t *testing.T) {
		kx := newKey(t)
		x, _ := signedMember(t, "x", kx, mesh.IPAMInfosRead)
		st := status(t, "x", kx, x)
		if s := st().SignedStates; s == nil || s.Sending || len(s.WaitingFor) != 0 {
			t.Fatalf("alone: SignedStates = %+v, want not sending, waiting for no member", s)
		}
		signedMember(t, "y", nil, 0, x.LocalAddr().String())
		want := []api.SignedStatesHolder{{Name: "y", State: api.MemberAlive, Reason: api.HolderPreviousRelease}}
		testnet.Eventually(t, 20*time.Second, 50*time.Millisecond, func() error {
			if s := st().SignedStates; s.Sending || !slices.Equal(s.WaitingFor, want) {
				return fmt.Errorf("SignedStates = %+v, want not sending, waiting for %+v", s, want)
			}
			return nil
		})
	})

	t.Run("after the switch", func(t *testing.T) {
		ka := newKey(t)
		a, _ := signedMember(t, "a", ka, mesh.IPAMInfosRead)
		st := status(t, "a", ka, a)
		signedMember(t, "b", newKey(t), mesh.IPAMInfosRead, a.LocalAddr().String())
		testnet.Eventually(t, 20*time.Second, 50*time.Millisecond, func() error {
			if s := st().SignedStates; !s.Sending || len(s.WaitingFor) != 0 {
				return fmt.Errorf("SignedStates = %+v with b reading, want sending", s)
			}
			return nil
		})
		c, _ := signedMember(t, "c", nil, 0, a.LocalAddr().String())
		cannotRead := "member c runs a release that cannot read signed IPAM states"
		testnet.Eventually(t, 20*time.Second, 50*time.Millisecond, func() error {
			if s := st(); !s.SignedStates.Sending || !hasProblem(s, cannotRead) {
				return fmt.Errorf("c of the previous release live after the switch: SignedStates %+v, problems %q", s.SignedStates, s.Problems)
			}
			return nil
		})
		if err := c.Leave(5 * time.Second); err != nil {
			t.Fatal(err)
		}
		testnet.Eventually(t, 20*time.Second, 50*time.Millisecond, func() error {
			if s := st(); !s.SignedStates.Sending || hasProblem(s, "member c ") {
				return fmt.Errorf("c left: SignedStates %+v, problems %q", s.SignedStates, s.Problems)
			}
			return nil
		})
	})
}

// TestDeltaSwitch: a node announces its IPAM ring changes by deltas only
// while every member reads them (a member of the previous release, live
// or gone within the grace, holds them back).
func TestDeltaSwitch(t *testing.T) {
	now := time.Now()
	member := func(name string, state api.MemberState, dl int, since time.Duration) mesh.Member {
		return mesh.Member{Name: name, State: state, Meta: mesh.Meta{IPAMDeltas: dl}, Since: now.Add(-since)}
	}
	self := mesh.Member{Name: "host1", State: api.MemberAlive, Self: true, Meta: mesh.Meta{IPAMDeltas: mesh.IPAMDeltasVersion}}
	reads := member("host2", api.MemberAlive, mesh.IPAMDeltasVersion, time.Minute)
	for _, tc := range []struct {
		name    string
		members []mesh.Member
		want    bool
	}{
		{"alone", []mesh.Member{self}, false},
		{"every member reads them", []mesh.Member{self, reads}, true},
		{"a member of the previous release live", []mesh.Member{self, reads, member("host3", api.MemberAlive, 0, time.Minute)}, false},
		{"one gone a moment ago", []mesh.Member{self, reads, member("host3", api.MemberDead, 0, signedInfosGrace/2)}, false},
		{"one gone long ago", []mesh.Member{self, reads, member("host3", api.MemberLeft, 0, signedInfosGrace+time.Minute)}, true},
		{"one that signs infos but reads no deltas", []mesh.Member{self, reads,
			{Name: "host3", State: api.MemberAlive, Meta: mesh.Meta{IPAMInfos: mesh.IPAMInfosSigned}, Since: now.Add(-time.Minute)}}, false},
		// No waiting for the membership to settle: most ring changes
		// are the donations of a join.
		{"a member that reads them joined a moment ago", []mesh.Member{self, reads, member("host3", api.MemberAlive, mesh.IPAMDeltasVersion, time.Second)}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := deltasOn(tc.members, now); got != tc.want {
				t.Fatalf("deltas = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestDigestSwitch: push/pull digests only while every member reads them:
// a member of the previous release, which reads deltas (IPAMDeltas 1) but
// no digests, holds them back and leaves deltas on.
func TestDigestSwitch(t *testing.T) {
	now := time.Now()
	member := func(name string, dl int) mesh.Member {
		return mesh.Member{Name: name, State: api.MemberAlive, Meta: mesh.Meta{IPAMDeltas: dl}, Since: now.Add(-time.Minute)}
	}
	self := mesh.Member{Name: "host1", State: api.MemberAlive, Self: true, Meta: mesh.Meta{IPAMDeltas: mesh.IPAMDigestsVersion}}
	for _, tc := range []struct {
		name                string
		members             []mesh.Member
		wantDigest, wantDel bool
	}{
		{"alone", []mesh.Member{self}, false, false},
		{"every member reads them", []mesh.Member{self, member("host2", mesh.IPAMDigestsVersion)}, true, true},
		{"a member of the previous release", []mesh.Member{self, member("host2", mesh.IPAMDigestsVersion), member("host3", mesh.IPAMDeltasVersion)}, false, true},
		{"a member of an older release", []mesh.Member{self, member("host2", mesh.IPAMDigestsVersion), member("host3", 0)}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := digestsOn(tc.members, now); got != tc.wantDigest {
				t.Errorf("digests = %v, want %v", got, tc.wantDigest)
			}
			if got := deltasOn(tc.members, now); got != tc.wantDel {
				t.Errorf("deltas = %v, want %v", got, tc.wantDel)
			}
		})
	}
}

// TestJoiningSwitch: a node that joins with automatic reclaim on starts as
// a joiner only while every member reads the Joining flag; one that reads
// deltas but not the flag (the previous release) holds it back.
func TestJoiningSwitch(t *testing.T) {
	now := time.Now()
	member := func(name string, jn int, since time.Duration) mesh.Member {
		return mesh.Member{Name: name, State: api.MemberAlive, Meta: mesh.Meta{IPAMDeltas: mesh.IPAMDeltasVersion, IPAMJoining: jn}, Since: now.Add(-since)}
	}
	self := mesh.Member{Name: "host1", State: api.MemberAlive, Self: true, Meta: mesh.Meta{IPAMJoining: mesh.IPAMJoiningVersion}}
	reads := member("host2", mesh.IPAMJoiningVersion, time.Minute)
	for _, tc := range []struct {
		name    string
		members []mesh.Member
		want    bool
	}{
		{"alone", []mesh.Member{self}, false},
		{"every member reads it", []mesh.Member{self, reads}, true},
		{"a member of the previous release", []mesh.Member{self, reads, member("host3", 0, time.Minute)}, false},
		{"a member that reads it joined a moment ago", []mesh.Member{self, reads, member("host3", mesh.IPAMJoiningVersion, time.Second)}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := joiningOn(tc.members, now); got != tc.want {
				t.Fatalf("joining = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestListSwitches: the peers list their space (ownedOn), the tombstones
// they hold (acksOn) and their vouches (vouchesOn), once every member reads that list, after
// the membership has settled; a member of an earlier release holds it
// back, and the node itself is not counted.
func TestListSwitches(t *testing.T) {
	now := time.Now()
	member := func(name string, jn int, since time.Duration) mesh.Member {
		return mesh.Member{Name: name, State: api.MemberAlive, Meta: mesh.Meta{IPAMDeltas: mesh.IPAMDigestsVersion, IPAMJoining: jn}, Since: now.Add(-since)}
	}
	self := mesh.Member{Name: "host1", State: api.MemberAlive, Self: true, Meta: mesh.Meta{IPAMJoining: mesh.IPAMJoiningVersion}}
	for _, sw := range []struct {
		name    string
		on      func([]mesh.Member, time.Time) bool
		version int // the first release that reads the list
	}{
		{"owned", ownedOn, mesh.IPAMOwnedVersion},
		{"acks", acksOn, mesh.IPAMAcksVersion},
		{"vouches", vouchesOn, mesh.IPAMVouchesVersion},
	} {
		reads := member("host2", sw.version, time.Minute)
		gone := member("host3", sw.version-1, time.Minute)
		gone.State = api.MemberDead
		for _, tc := range []struct {
			name    string
			members []mesh.Member
			want    bool
		}{
			{"alone", []mesh.Member{self}, false},
			{"every member reads it", []mesh.Member{self, reads}, true},
			{"a member of the release before", []mesh.Member{self, reads, member("host3", sw.version-1, time.Minute)}, false},
			{"one of the release before gone a moment ago", []mesh.Member{self, reads, gone}, false},
			{"a member that reads it joined a moment ago", []mesh.Member{self, reads, member("host3", sw.version, time.Second)}, false},
		} {
			t.Run(sw.name+"/"+tc.name, func(t *testing.T) {
				if got := sw.on(tc.members, now); got != tc.want {
					t.Fatalf("%s = %v, want %v", sw.name, got, tc.want)
				}
			})
		}
	}
}

// TestListProblems: once this node lists its space, a live member that
// reads signed states but not the lists is named once; one gone, one of
// an earlier release named by the signed-states line, and any member
// before the switch are not. Once it also lists its acknowledged
// removals, a member that reads only the owned spans is named too; once it
// lists its vouches, a member that reads only the acknowledgements too.
func TestListProblems(t *testing.T) {
	now := time.Now()
	member := func(name string, ii, jn int, state api.MemberState) mesh.Member {
		return mesh.Member{Name: name, State: state, Meta: mesh.Meta{IPAMInfos: ii, IPAMJoining: jn}, Since: now.Add(-time.Minute)}
	}
	members := []mesh.Member{
		{Name: "host1", State: api.MemberAlive, Self: true},
		member("host2", mesh.IPAMInfosSigned, mesh.IPAMAcksVersion, api.MemberAlive),
		member("host3", mesh.IPAMInfosSigned, mesh.IPAMJoiningVersion, api.MemberAlive),
		member("host4", mesh.IPAMInfosSigned, mesh.IPAMJoiningVersion, api.MemberDead),
		member("host5", 0, 0, api.MemberAlive),
		member("host6", mesh.IPAMInfosSigned, mesh.IPAMOwnedVersion, api.MemberAlive),
		member("host7", mesh.IPAMInfosSigned, mesh.IPAMVouchesVersion, api.MemberAlive),
	}
	got := listProblems(members, now, true, false, false)
	if len(got) != 1 || !strings.Contains(got[0], "member host3 runs a release that cannot read the space") {
		t.Fatalf("problems %q, want host3's alone", got)
	}
	got = listProblems(members, now, true, true, false)
	if len(got) != 2 || !strings.Contains(got[0], "member host3 runs a release that cannot read the lists") || !strings.Contains(got[1], "member host6 ") {
		t.Fatalf("problems with acknowledgements listed %q, want host3's and host6's", got)
	}
	got = listProblems(members, now, true, true, true)
	if len(got) != 3 || !strings.Contains(got[0], "member host2 runs a release that cannot read the vouches") || !strings.Contains(got[1], "member host3 ") || !strings.Contains(got[2], "member host6 ") {
		t.Fatalf("problems with vouches listed %q, want host2's, host3's and host6's", got)
	}
	if got := listProblems(members, now, false, false, false); got != nil {
		t.Fatalf("before the switch: %q", got)
	}
}
