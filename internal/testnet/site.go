package testnet

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
)

// Site is a further underlay network of a Net: its own switch and IPv4
// subnet, joined to the first network by a router namespace that routes
// only between the pairs of hosts Allow names (a firewall between two
// data centres that lets a few gateway hosts talk). Every host of either
// network has a route to the other network's subnet through the router;
// what the router does not allow, it drops, so those hosts have no path
// at all to each other, gossip included.
type Site struct {
	n      *Net
	index  int // from 1, in creation order
	subnet netip.Prefix
	dir    string // holds the switch namespace
	nat    bool   // behind a masquerading router: outbound only
}

// routerTable is the nftables table (inet family, in the router namespace)
// holding what the router forwards.
const routerTable = "testnet-router"

// routerNS is the router namespace, created with the first Site.
func (n *Net) routerNS() string { return filepath.Join(n.dir, "router", "net") }

func (s *Site) switchNS() string { return filepath.Join(s.dir, "net") }

// Subnet is the site's underlay subnet.
func (s *Site) Subnet() netip.Prefix { return s.subnet }

// routerAddr is the router's address on subnet: its last address below
// the broadcast address (.254 of a /24).
func routerAddr(subnet netip.Prefix) netip.Addr {
	a := subnet.Masked().Addr().As4()
	host := uint32(1)<<(32-subnet.Bits()) - 1
	v := (uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])) | host
	v--
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// routesFor returns the routes a new host of site (nil: the first network)
// needs, as "subnet@via" words for the host's setup script: to every
// other network, through the router. Called with n.mu held.
func (n *Net) routesFor(site *Site) string {
	if len(n.sites) == 0 {
		return ""
	}
	var out []string
	if site != nil {
		out = append(out, n.subnet.String()+"@"+routerAddr(site.subnet).String())
	}
	for _, o := range n.sites {
		if o != site && !o.nat {
			via := routerAddr(n.subnet)
			if site != nil {
				via = routerAddr(site.subnet)
			}
			out = append(out, o.subnet.String()+"@"+via.String())
		}
	}
	return strings.Join(out, " ")
}

// AddSite creates a further underlay network with subnet (IPv4, at least
// a /27, disjoint from the others) and its router leg; add hosts to it
// with Site.AddHost. Existing hosts of the first network get a route to
// it. It fails t on error; call it from the goroutine of t.
func (n *Net) AddSite(t testing.TB, subnet netip.Prefix) *Site {
	t.Helper()
	s, err := n.addSite(subnet, false)
	if err != nil {
		t.Fatalf("failed to add testnet site %s: %v", subnet, err)
	}
	return s
}

// AddNATSite is AddSite for a network behind a masquerading router, as a
// home or an office behind its NAT gateway: its hosts reach the first
// network (their packets leave with the router's address there), and
// nothing from the first network reaches them but the answers to what
// they sent (connection tracking: outbound only). Hosts of the first
// network get no route to it.
func (n *Net) AddNATSite(t testing.TB, subnet netip.Prefix) *Site {
	t.Helper()
	s, err := n.addSite(subnet, true)
	if err != nil {
		t.Fatalf("failed to add testnet NAT site %s: %v", subnet, err)
	}
	return s
}

// RouterAddr is the router's address on the first network: the source
// of what hosts of a NAT site send there.
func (n *Net) RouterAddr() netip.Addr { return routerAddr(n.subnet) }

func (n *Net) addSite(subnet netip.Prefix, nat bool) (*Site, error) {
	subnet = subnet.Masked()
	if !subnet.Addr().Is4() || !n.subnet.Addr().Is4() || subnet.Bits() > 27 {
		return nil, errors.New("sites need IPv4 subnets of at least 32 addresses")
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, errors.New("testnet already cleaned up")
	}
	if subnet.Overlaps(n.subnet) {
		return nil, fmt.Errorf("subnet %s overlaps %s", subnet, n.subnet)
	}
	for _, o := range n.sites {
		if subnet.Overlaps(o.subnet) {
			return nil, fmt.Errorf("subnet %s overlaps %s", subnet, o.subnet)
		}
	}
	s := &Site{n: n, index: len(n.sites) + 1, subnet: subnet, nat: nat}
	s.dir = filepath.Join(n.dir, fmt.Sprintf("site%d", s.index))
	if err := n.setupSwitchIn(s.dir); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	if len(n.sites) == 0 {
		if err := n.setupRouter(ctx); err != nil {
			return nil, err
		}
	}
	// The router's leg on the site: a veth from the router to the site's
	// switch.
	leg := fmt.Sprintf("site%d", s.index)
	batch := fmt.Sprintf("link add %s type veth peer name vrouter netns %s\naddr add %s dev %s\nlink set %s up\n",
		leg, s.switchNS(), netip.PrefixFrom(routerAddr(subnet), subnet.Bits()), leg, leg)
	if err := runCmd(ctx, batch, "nsenter", "--net="+n.routerNS(), "ip", "-batch", "-"); err != nil {
		return nil, fmt.Errorf("failed to create the router's leg on %s: %w", subnet, err)
	}
	if err := runCmd(ctx, fmt.Sprintf("link set vrouter master %s\nlink set vrouter up\n", bridgeName), "nsenter", "--net="+s.switchNS(), "ip", "-batch", "-"); err != nil {
		return nil, fmt.Errorf("failed to attach the router to the switch of %s: %w", subnet, err)
	}
	if nat {
		rules := fmt.Sprintf(`table ip %[1]s-nat {
 chain post {
  type nat hook postrouting priority srcnat; policy accept;
 }
}
add rule ip %[1]s-nat post oifname "main" ip saddr %[2]s masquerade
add rule inet %[1]s forward iifname %[3]q oifname "main" accept
add rule inet %[1]s forward iifname "main" oifname %[3]q ct state established,related accept
`, routerTable, subnet, leg)
		if err := runCmd(ctx, rules, "nsenter", "--net="+n.routerNS(), "nft", "-f", "-"); err != nil {
			return nil, fmt.Errorf("failed to set up the router's NAT for %s: %w", subnet, err)
		}
	}
	n.sites = append(n.sites, s)
	if nat {
		return s, nil
	}
	// Hosts of the first network that exist already learn the route.
	for _, h := range n.hosts {
		if h.site != nil {
			continue
		}
		if err := runCmd(ctx, "", "nsenter", "--net="+h.NetNS(), "ip", "route", "add", subnet.String(), "via", routerAddr(n.subnet).String()); err != nil {
			return nil, fmt.Errorf("failed to route %s on %s: %w", subnet, h.Name, err)
		}
	}
	return s, nil
}

// setupRouter creates the router namespace, its leg on the first network,
// forwarding, and a forward chain that drops everything until Allow.
func (n *Net) setupRouter(ctx context.Context) error {
	if err := makeNamespaces(ctx, filepath.Join(n.dir, "router"), false); err != nil {
		return err
	}
	batch := fmt.Sprintf("link set lo up\nlink add main type veth peer name vrouter netns %s\naddr add %s dev main\nlink set main up\n",
		n.switchNS(), netip.PrefixFrom(routerAddr(n.subnet), n.subnet.Bits()))
	if err := runCmd(ctx, batch, "nsenter", "--net="+n.routerNS(), "ip", "-batch", "-"); err != nil {
		return fmt.Errorf("failed to create the router's leg on %s: %w", n.subnet, err)
	}
	if err := runCmd(ctx, fmt.Sprintf("link set vrouter master %s\nlink set vrouter up\n", bridgeName), "nsenter", "--net="+n.switchNS(), "ip", "-batch", "-"); err != nil {
		return fmt.Errorf("failed to attach the router to the first switch: %w", err)
	}
	if err := runCmd(ctx, "", "nsenter", "--net="+n.routerNS(), "sh", "-ec", "echo 1 > /proc/sys/net/ipv4/ip_forward"); err != nil {
		return fmt.Errorf("failed to enable forwarding in the router: %w", err)
	}
	rules := fmt.Sprintf("table inet %s {\n chain forward {\n  type filter hook forward priority 0; policy drop;\n }\n}\n", routerTable)
	if err := runCmd(ctx, rules, "nsenter", "--net="+n.routerNS(), "nft", "-f", "-"); err != nil {
		return fmt.Errorf("failed to set up the router's forward chain: %w", err)
	}
	return nil
}

// AddHost creates one more host on the site, numbered and named as
// Net.AddHost numbers them (host<i>, the (10+i)th address of the site's
// subnet), with routes to the other networks through the router. It fails
// t on error; call it from the goroutine of t.
func (s *Site) AddHost(t testing.TB) *Host {
	t.Helper()
	h, err := s.n.addHost(s)
	if err != nil {
		t.Fatalf("failed to add testnet host to site %s: %v", s.subnet, err)
	}
	return h
}

// Allow makes the router forward everything between a and b, both ways:
// the only paths between the networks are those allowed. It blocks until
// the rule is in place.
func (n *Net) Allow(a, b *Host) error {
	if a.net != n || b.net != n {
		return fmt.Errorf("failed to allow %s and %s: not both in this net", a.Name, b.Name)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.sites) == 0 {
		return errors.New("failed to allow: this net has no router (no Site)")
	}
	var rules strings.Builder
	for _, dir := range [][2]*Host{{a, b}, {b, a}} {
		fmt.Fprintf(&rules, "add rule inet %s forward ip saddr %s ip daddr %s accept\n", routerTable, dir[0].Addr, dir[1].Addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	if err := runCmd(ctx, rules.String(), "nsenter", "--net="+n.routerNS(), "nft", "-f", "-"); err != nil {
		return fmt.Errorf("failed to allow %s and %s through the router: %w", a.Name, b.Name, err)
	}
	return nil
}
