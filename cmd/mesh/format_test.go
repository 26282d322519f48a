package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/crypto"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("output differs from %s:\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

var now = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

func sampleStatus() *api.Status {
	return &api.Status{
		Name: "host-b", PeerID: "0123456789abcdef0123456789abcdef", Version: "v0.1.0",
		Peers: []api.Peer{
			{Name: "host-c", Address: "192.0.2.12:6783", State: "dead", PeerID: "cc"},
			{Name: "host-b", Address: "192.0.2.11:6783", State: "alive", Self: true, PeerID: "0123456789abcdef0123456789abcdef", Identity: "11qYAYKxCrfV"},
			{Name: "a-very-long-host-name", Address: "10.9.0.5:6783", State: "suspect", PeerID: "aa", PublicAddress: "198.51.100.7"},
		},
		OverlayIP: "10.32.0.1",
		IPAM: &api.IPAM{
			Range: "10.32.0.0/12", Status: "ready", Owned: []string{"10.32.0.0/14"}, Allocated: 7, Free: 262136,
			Ranges: []api.RangeInfo{{CIDR: "10.32.0.0/14", Owner: "host-b"}},
			Peers: []api.IPAMPeer{
				{Name: "host-c", Addresses: 524288, Percent: 50, Reachable: false},
				{Name: "host-b", Addresses: 262144, Percent: 25, Reachable: true},
				{Name: "a-very-long-host-name", Addresses: 262144, Percent: 25, Reachable: true, Joining: true},
				{Name: "host-z", Removed: true, Reserved: 12},
			},
			Problems:     []string{"host-c owns 50.0% of the range and is unreachable: if it is gone for good, run `mesh rmpeer host-c` on one live node"},
			SignedStates: &api.SignedStates{Sending: true},
			Deltas:       true,
			Digests:      true,
			OwnedListed:  true,
		},
		Policies: []api.PolicyStatus{
			{Namespace: "shop", Name: "web-ingress", Types: []string{"Ingress"}, Pods: []string{"shop/web-1", "shop/web-2"}, DeniedPackets: 42},
			{Namespace: "default", Name: "deny-all", Types: []string{"Ingress", "Egress"}, Warnings: []string{`ipBlock "10.0.0.0/33" is not a CIDR: allows nothing`}},
		},
		Dataplane: "userspace", MTU: 1420, RelayedBytes: 5 << 20,
		Connections: []api.Connection{
			{Peer: "host-c", Endpoint: "192.0.2.12:6784", State: "failed", RxBytes: 0, TxBytes: 1480, DirectPath: api.PathDown, Via: "host-d", EstimatedRTTMillis: 48.25},
			{Peer: "a-very-long-host-name", Endpoint: "192.0.2.10:6784", State: "established", LastHandshake: now.Add(-42 * time.Second).Format(time.RFC3339), RxBytes: 123456789, TxBytes: 2048,
				DirectPath: api.PathUp, RTTMillis: 0.42, EstimatedRTTMillis: 0.6, RelayedBytes: 3 << 20},
			{Peer: "host-e", Endpoint: "192.0.2.14:6784", State: "established", DirectPath: api.PathDown},
			{Peer: "host-f", Endpoint: "192.0.2.15:6784", State: "established", DirectPath: api.PathDown, Via: "host-d", EndToEnd: true, EstimatedRTTMillis: 1.5},
		},
		Targets: []api.Target{
			{Address: "192.0.2.99:6783", Source: "launch", State: "retrying", Error: "cannot join 192.0.2.99:6783: dial tcp 192.0.2.99:6783: i/o timeout", NextRetry: now.Add(8 * time.Second).Format(time.RFC3339)},
			{Address: "192.0.2.10:6783", Source: "launch", State: "connected"},
			{Address: "192.0.2.50:6783", Source: "connect", State: "failed", Error: "cannot join 192.0.2.50:6783: wrong mesh password?", NextRetry: now.Add(30 * time.Second).Format(time.RFC3339)},
		},
	}
}

// sampleAttachments: an IPv4 attachment made before IPv6 was enabled, and
// a dual-stack one.
func sampleAttachments() []api.Attachment {
	return []api.Attachment{
		{ContainerID: "mesh-attach-4-f0000abc", IfName: "eth0", NetNS: "/run/netns/blue", Address: "10.32.0.7/32", Gateway: "10.32.0.1", Created: "2026-01-02T03:04:05Z"},
		{ContainerID: "mesh-attach-4-f0000abd", IfName: "eth0", NetNS: "/run/netns/green", Address: "10.32.0.8/32", Gateway: "10.32.0.1",
			Address6: "fd32::8/128", Gateway6: "fd32::1", Created: "2026-01-02T03:04:06Z"},
	}
}

func TestFormatGolden(t *testing.T) {
	tests := []struct {
		name string
		fn   func(*bytes.Buffer)
	}{
		{"status", func(b *bytes.Buffer) { formatStatus(b, sampleStatus(), now) }},
		{"status-alone", func(b *bytes.Buffer) {
			formatStatus(b, &api.Status{Name: "solo", PeerID: "ff", Version: "dev", Peers: []api.Peer{{Name: "solo", State: "alive", Self: true}}}, now)
		}},
		{"peers", func(b *bytes.Buffer) { formatPeers(b, sampleStatus()) }},
		{"ipam", func(b *bytes.Buffer) { formatIPAM(b, sampleStatus()) }},
		{"ipam-off", func(b *bytes.Buffer) { formatIPAM(b, &api.Status{}) }},
		{"status-dual", func(b *bytes.Buffer) { formatStatus(b, dualStatus(), now) }},
		{"ipam-dual", func(b *bytes.Buffer) { formatIPAM(b, dualStatus()) }},
		{"ipam-blocked", func(b *bytes.Buffer) {
			st := sampleStatus()
			st.IPAM.Blocked, st.IPAM.BlockedReason = "waiting for lease echoes: 1 of 2 voters answered (this peer included)", "lease-echo"
			formatIPAM(b, st)
		}},
		{"ipam-signed-waiting", func(b *bytes.Buffer) {
			st := sampleStatus()
			st.IPAM.SignedStates = &api.SignedStates{WaitingFor: []api.SignedStatesHolder{
				{Name: "a-very-long-host-name", State: api.MemberSuspect, Reason: api.HolderPreviousRelease},
				{Name: "host-c", State: api.MemberDead, Reason: api.HolderPreviousRelease},
			}}
			st.IPAM.OwnedListed = false // follows the switch to signed states
			formatIPAM(b, st)
		}},
		{"ipam-removed", func(b *bytes.Buffer) {
			st := sampleStatus()
			st.IPAM.Tombstones, st.IPAM.TombstonesAcked, st.IPAM.TombstonesDropped = 2, true, 5
			formatIPAM(b, st)
			st.IPAM.TombstonesAcked, st.IPAM.TombstonesDropped = false, 0
			formatIPAM(b, st)
		}},
		{"ipam-vouched", func(b *bytes.Buffer) {
			st := sampleStatus()
			st.IPAM.ReclaimsVouched = true
			formatIPAM(b, st)
		}},
		{"connections", func(b *bytes.Buffer) { formatConnections(b, sampleStatus(), now) }},
		{"attachments", func(b *bytes.Buffer) { formatAttachments(b, sampleAttachments()[:1]) }},
		{"attachments-dual", func(b *bytes.Buffer) { formatAttachments(b, sampleAttachments()) }},
		{"policy", func(b *bytes.Buffer) { formatPolicies(b, sampleStatus()) }},
		{"policy-none", func(b *bytes.Buffer) { formatPolicies(b, &api.Status{}) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			tt.fn(&b)
			golden(t, tt.name, b.Bytes())
		})
	}
}

func TestParseInterspersed(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	o := fs.String("o", "human", "")
	pos, err := parseInterspersed(fs, []string{"peers", "-o", "json", "--", "-x"})
	if err != nil || *o != "json" || len(pos) != 2 || pos[0] != "peers" || pos[1] != "-x" {
		t.Fatalf("pos=%v o=%s err=%v", pos, *o, err)
	}
}

func TestRunErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		code int
		want string
	}{
		{"no command", nil, nil, 2, "Usage:"},
		{"unknown command", []string{"frobnicate"}, nil, 2, "unknown command"},
		{"status bad subject", []string{"status", "bogus"}, nil, 2, "unknown subject"},
		{"status bad format", []string{"status", "-o", "yaml"}, nil, 2, "unknown output format"},
		{"daemon down", []string{"status", "--socket", "/nonexistent/mesh.sock"}, nil, exitUnreachable, "is `mesh launch` running?"},
		{"launch without password", []string{"launch", "--state-dir", "/nonexistent/x"}, map[string]string{"MESH_PASSWORD": ""}, 1, "MESH_PASSWORD is set but empty"},
		{"launch bad peer", []string{"launch", "--insecure", "host:99999"}, nil, 1, "port \"99999\""},
		{"connect without peer", []string{"connect"}, nil, 2, "Usage: mesh connect PEER"},
		{"launch two IPv4 ranges", []string{"launch", "--insecure", "--ipalloc-range", "10.32.0.0/12", "--ipalloc-range", "10.64.0.0/12"}, nil, 1, "at most one range per address family"},
		{"launch two IPv6 ranges in a list", []string{"launch", "--insecure", "--ipalloc-range", "10.32.0.0/12,fd32::/48,fd33::/48"}, nil, 1, "at most one range per address family"},
		{"launch bad second range", []string{"launch", "--insecure", "--ipalloc-range", "10.32.0.0/12", "--ipalloc-range", "fd32::1/48"}, nil, 1, "host bits set"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			var out, errb bytes.Buffer
			code := run(tt.args, &out, &errb)
			if code != tt.code || !bytes.Contains(append(out.Bytes(), errb.Bytes()...), []byte(tt.want)) {
				t.Fatalf("run(%v) = %d, stdout %q, stderr %q; want %d and %q", tt.args, code, out.String(), errb.String(), tt.code, tt.want)
			}
		})
	}
}

func TestLaunchRefusesWithoutPassword(t *testing.T) {
	os.Unsetenv("MESH_PASSWORD")
	var out, errb bytes.Buffer
	code := run([]string{"launch", "--state-dir", t.TempDir()}, &out, &errb)
	if code != 1 || !bytes.Contains(errb.Bytes(), []byte("no mesh password")) {
		t.Fatalf("code %d, stderr %q", code, errb.String())
	}
}

func TestKeygen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mesh.key")
	var out, errb bytes.Buffer
	if code := run([]string{"keygen", path}, &out, &errb); code != 0 {
		t.Fatalf("keygen: code %d, stderr %q", code, errb.String())
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	data, _ := os.ReadFile(path)
	keys, err := crypto.ParseKeyFile(data)
	if err != nil || len(keys) != 1 {
		t.Fatalf("key file: %v keys, %v", len(keys), err)
	}
	if s := out.String() + errb.String(); strings.Contains(s, keys[0].String()) || strings.Contains(s, crypto.KeyFileLine(keys[0])) {
		t.Fatalf("keygen printed the key: %q", s)
	}
	out.Reset()
	errb.Reset()
	if code := run([]string{"keygen", path}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "refusing to overwrite") {
		t.Fatalf("second keygen: code %d, stderr %q", code, errb.String())
	}
	if again, _ := os.ReadFile(path); !bytes.Equal(again, data) {
		t.Fatal("a refused keygen changed the key file")
	}
}

func TestLaunchRefusesWeakSecrets(t *testing.T) {
	dir := t.TempDir()
	open := filepath.Join(dir, "open.key")
	if err := os.WriteFile(open, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"short password", nil, map[string]string{"MESH_PASSWORD": "too short", "MESH_NAME": "m"}, "shorter than 16"},
		{"password without mesh name", nil, map[string]string{"MESH_PASSWORD": "long enough password here", "MESH_NAME": ""}, "--mesh-name"},
		{"world-readable key file", []string{"--key-file", open}, map[string]string{"MESH_NAME": ""}, "chmod 600 " + open},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			state := filepath.Join(dir, "state-"+strings.ReplaceAll(tc.name, " ", "-"))
			var out, errb bytes.Buffer
			code := run(append([]string{"launch", "--state-dir", state, "--dataplane", "none", "--no-cni", "--socket", filepath.Join(dir, "s.sock")}, tc.args...), &out, &errb)
			if code != 1 || !strings.Contains(errb.String(), tc.want) {
				t.Fatalf("code %d, stderr %q; want an error saying %q", code, errb.String(), tc.want)
			}
			if _, err := os.Stat(state); err == nil {
				t.Fatal("a refused launch created the state dir")
			}
		})
	}
}

// TestFormatStatusShowsNATHome: a node behind NAT names its home, a home
// the nodes attached to it; neither line otherwise. A node found behind
// NAT at launch says who found it and how that peer saw it, and what the
// peers it asked say of the port its NAT gives its WireGuard packets.
func TestFormatStatusShowsNATHome(t *testing.T) {
	tests := []struct {
		name string
		gr   *api.GossipRelay
		want []string
		not  []string
	}{
		{"behind NAT", &api.GossipRelay{Home: "host1"}, []string{"NAT home:  host1 (this node is behind NAT"}, []string{"Behind NAT:"}},
		{"a home", &api.GossipRelay{Attached: []string{"host4", "host5"}}, []string{"Behind NAT:  host4, host5 (their gossip"}, []string{"NAT home:"}},
		{"neither", &api.GossipRelay{Sent: 3}, nil, []string{"NAT home:", "Behind NAT:"}},
		{"no relay status", nil, nil, []string{"NAT home:", "Behind NAT:"}},
		{"found behind NAT", &api.GossipRelay{Reachability: api.ReachBehindNAT, CheckedBy: "192.0.2.1:6783", SeenAs: "192.0.2.254:40312"},
			[]string{"Reachability:  behind NAT: 192.0.2.1:6783 could not connect to this node's gossip address (it sees this node as 192.0.2.254:40312)"}, nil},
		{"reachable", &api.GossipRelay{Reachability: api.ReachDirect, CheckedBy: "192.0.2.1:6783"}, nil, []string{"Reachability:"}},
		{"configured", &api.GossipRelay{Reachability: api.ReachConfigured, Home: "host1"}, []string{"NAT home:  host1"}, []string{"Reachability:"}},
		{"NAT port asking", &api.GossipRelay{Home: "host1", NATPort: api.NATPortAsking}, []string{"NAT port:  asking the peers"}, nil},
		{"NAT port kept", &api.GossipRelay{Home: "host1", NATPort: api.NATPortKept}, []string{"NAT port:  kept: the NAT keeps"}, nil},
		{"NAT port mapped", &api.GossipRelay{Home: "host1", NATPort: api.NATPortMapped, PublicPort: 40784}, []string{"NAT port:  mapped: the NAT gives this node's WireGuard packets port 40784 for every peer (announced)"}, nil},
		{"NAT port varies", &api.GossipRelay{Home: "host1", NATPort: api.NATPortVaries}, []string{"NAT port:  varies per peer: "}, nil},
		{"not behind NAT", &api.GossipRelay{Sent: 3}, nil, []string{"NAT port:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			formatStatus(&b, &api.Status{Name: "a", GossipRelay: tt.gr}, time.Now())
			for _, w := range tt.want {
				if !strings.Contains(b.String(), w) {
					t.Errorf("status output lacks %q:\n%s", w, b.String())
				}
			}
			for _, n := range tt.not {
				if strings.Contains(b.String(), n) {
					t.Errorf("status output has %q:\n%s", n, b.String())
				}
			}
		})
	}
}

func TestFormatStatusShowsKeyIDs(t *testing.T) {
	st := &api.Status{Name: "a", KeyIDs: []string{"6d53fb95a89a2c6f", "857933370860a929"}, GossipKeyID: "857933370860a929"}
	var b bytes.Buffer
	formatStatus(&b, st, time.Now())
	if want := "Mesh keys:  6d53fb95a89a2c6f, 857933370860a929 (gossip)"; !strings.Contains(b.String(), want) {
		t.Fatalf("status output lacks %q:\n%s", want, b.String())
	}
	b.Reset()
	formatStatus(&b, &api.Status{Name: "a"}, time.Now())
	if strings.Contains(b.String(), "Mesh keys") {
		t.Fatalf("keys line without keys (--insecure):\n%s", b.String())
	}
}

// TestFormatStatusShowsDataplaneProcess: the overview's data plane line
// names the mesh-dataplane process when status reports one (with its PID
// when known), and not otherwise.
func TestFormatStatusShowsDataplaneProcess(t *testing.T) {
	tests := []struct {
		name string
		dp   *api.DataplaneProcess
		want string
	}{
		{name: "up", dp: &api.DataplaneProcess{Mode: "auto", State: api.DataplaneProcessUp, PID: 42, Restarts: 1},
			want: "Data plane:  userspace, MTU 1420, connections: none; process mesh-dataplane up, PID 42, 1 restart(s) (--dataplane-process auto)"},
		{name: "down, PID unknown", dp: &api.DataplaneProcess{Mode: "external", State: api.DataplaneProcessDown},
			want: "Data plane:  userspace, MTU 1420, connections: none; process mesh-dataplane down, 0 restart(s) (--dataplane-process external)"},
		{name: "none"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			formatStatus(&b, &api.Status{Name: "a", Dataplane: "userspace", MTU: 1420, DataplaneProcess: tt.dp}, time.Now())
			if tt.want == "" {
				if strings.Contains(b.String(), "mesh-dataplane") {
					t.Fatalf("a data-plane process line without one:\n%s", b.String())
				}
				return
			}
			if !strings.Contains(b.String(), tt.want) {
				t.Fatalf("status output lacks %q:\n%s", tt.want, b.String())
			}
		})
	}
}

// TestSignedLine: the Signed line of `mesh status ipam` says yes once the
// node sends signed IPAM states, and until then names what holds it back,
// a bounded number of members at most.
func TestSignedLine(t *testing.T) {
	holder := func(name string, state api.MemberState, reason string) api.SignedStatesHolder {
		return api.SignedStatesHolder{Name: name, State: state, Reason: reason}
	}
	var many []api.SignedStatesHolder
	for i := range maxHoldersShown + 2 {
		many = append(many, holder(fmt.Sprintf("host%d", i), api.MemberAlive, api.HolderPreviousRelease))
	}
	tests := []struct {
		name string
		s    api.SignedStates
		want string
	}{
		{"sending", api.SignedStates{Sending: true}, "yes"},
		{"alone", api.SignedStates{}, "not yet (no other member is live)"},
		{"settling", api.SignedStates{Settling: true}, "not yet (the membership changed a moment ago)"},
		{"a member of the previous release", api.SignedStates{WaitingFor: []api.SignedStatesHolder{holder("host3", api.MemberAlive, api.HolderPreviousRelease)}},
			"not yet (waiting for host3: previous release)"},
		{"one gone, one whose metadata does not parse", api.SignedStates{WaitingFor: []api.SignedStatesHolder{
			holder("host3", api.MemberLeft, api.HolderPreviousRelease), holder("host4", api.MemberAlive, api.HolderBadMeta)}},
			"not yet (waiting for host3: previous release, left; host4: metadata does not parse)"},
		{"bounded", api.SignedStates{WaitingFor: many},
			"not yet (waiting for host0: previous release; host1: previous release; host2: previous release; host3: previous release; host4: previous release; and 2 more)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := signedLine(&tt.s); got != tt.want {
				t.Fatalf("signedLine = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestFormatPeersShowsPublicEndpoint: a node behind NAT shows where the
// others send its data plane: its public address, with the port its NAT
// maps its WireGuard port to when it announces one; a port without a
// usable address shows nothing more.
func TestFormatPeersShowsPublicEndpoint(t *testing.T) {
	for _, tc := range []struct {
		name string
		peer api.Peer
		want string
		not  string
	}{
		{"kept port", api.Peer{Name: "host4", Address: "10.9.0.10:6783", PublicAddress: "192.0.2.253"}, "10.9.0.10:6783 (public 192.0.2.253)", ":40784"},
		{"mapped port", api.Peer{Name: "host4", Address: "10.9.0.10:6783", PublicAddress: "192.0.2.253", PublicPort: 40784}, "10.9.0.10:6783 (public 192.0.2.253:40784)", ""},
		{"IPv6", api.Peer{Name: "host4", Address: "[fd00::10]:6783", PublicAddress: "2001:db8::253", PublicPort: 40784}, "(public [2001:db8::253]:40784)", ""},
		{"port out of range", api.Peer{Name: "host4", Address: "10.9.0.10:6783", PublicAddress: "192.0.2.253", PublicPort: 70000}, "(public 192.0.2.253)", "70000"},
		{"not behind NAT", api.Peer{Name: "host1", Address: "192.0.2.11:6783", PublicPort: 40784}, "192.0.2.11:6783", "public"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			formatPeers(&b, &api.Status{Name: "a", Peers: []api.Peer{tc.peer}})
			if !strings.Contains(b.String(), tc.want) {
				t.Fatalf("peers output lacks %q:\n%s", tc.want, b.String())
			}
			if tc.not != "" && strings.Contains(b.String(), tc.not) {
				t.Fatalf("peers output has %q:\n%s", tc.not, b.String())
			}
		})
	}
}
