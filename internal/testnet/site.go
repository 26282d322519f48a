package testnet

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
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
		if site.nat {
			return strings.Join(out, " ") // its own router leads to the first network only
		}
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

// AddNATSite is AddSite for a network behind a masquerading router of
// its own, as a home or an office behind its NAT gateway: its hosts reach
// the first network (their packets leave with the router's public
// address there, Site.PublicAddr), and nothing from the first network
// reaches them but the answers to what they sent (connection tracking:
// outbound only; an answer is any packet from the address and port a
// host sent to, so two hosts behind two NAT sites that send to each
// other's public address and port at once get through, as hole punching
// does). Hosts of the first network get no route to it, and its hosts
// none to other sites.
func (n *Net) AddNATSite(t testing.TB, subnet netip.Prefix) *Site {
	t.Helper()
	s, err := n.addSite(subnet, true)
	if err != nil {
		t.Fatalf("failed to add testnet NAT site %s: %v", subnet, err)
	}
	return s
}

// RouterAddr is the address on the first network of the router that
// joins the sites of AddSite.
func (n *Net) RouterAddr() netip.Addr { return routerAddr(n.subnet) }

// PublicAddr is, for a site of AddNATSite, its router's address on the
// first network: the source of what its hosts send there. The routers of
// NAT sites take the addresses just below the first network's router
// (.253 for the first site of a /24, then .252, ...).
func (s *Site) PublicAddr() netip.Addr {
	a := routerAddr(s.n.subnet)
	for range s.index {
		a = a.Prev()
	}
	return a
}

// MapUDPPort makes the router of a site of AddNATSite give what its hosts
// send from UDP port from the source port to instead, the same for every
// destination (an endpoint-independent mapping, as most home and office
// routers make; Linux masquerading keeps the port while it is free). What
// comes back is let in only as an answer, as before. Call it before the
// hosts send from that port: a flow tracked already keeps its mapping.
func (s *Site) MapUDPPort(t testing.TB, from, to uint16) {
	t.Helper()
	if !s.nat {
		t.Fatalf("testnet: site %s has no NAT router", s.subnet)
	}
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	rule := fmt.Sprintf("insert rule ip %s-nat post oifname \"main\" ip saddr %s udp sport %d snat to %s:%d\n", routerTable, s.subnet, from, s.PublicAddr(), to)
	if err := runCmd(ctx, rule, "nsenter", "--net="+s.natRouterNS(), "nft", "-f", "-"); err != nil {
		t.Fatalf("testnet: failed to map UDP port %d to %d on the NAT of %s: %v", from, to, s.subnet, err)
	}
}

// MapUDPPortPerDestination makes the router of a site of AddNATSite give
// what its hosts send from UDP port from a random source port of [lo, hi]
// for each new destination (an endpoint-dependent mapping: a symmetric
// NAT). Call it before the hosts send from that port.
func (s *Site) MapUDPPortPerDestination(t testing.TB, from, lo, hi uint16) {
	t.Helper()
	if !s.nat {
		t.Fatalf("testnet: site %s has no NAT router", s.subnet)
	}
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	rule := fmt.Sprintf("insert rule ip %s-nat post oifname \"main\" ip saddr %s udp sport %d snat to %s:%d-%d random\n", routerTable, s.subnet, from, s.PublicAddr(), lo, hi)
	if err := runCmd(ctx, rule, "nsenter", "--net="+s.natRouterNS(), "nft", "-f", "-"); err != nil {
		t.Fatalf("testnet: failed to map UDP port %d per destination on the NAT of %s: %v", from, s.subnet, err)
	}
}

// natRouterNS is the network namespace of a NAT site's own router.
func (s *Site) natRouterNS() string { return filepath.Join(s.dir, "router", "net") }

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
	if nat {
		if err := n.setupNATRouter(ctx, s); err != nil {
			return nil, err
		}
	} else {
		if !slices.ContainsFunc(n.sites, func(o *Site) bool { return !o.nat }) {
			if err := n.setupRouter(ctx); err != nil {
				return nil, err
			}
		}
		// The router's leg on the site: a veth from the router to the
		// site's switch.
		leg := fmt.Sprintf("site%d", s.index)
		batch := fmt.Sprintf("link add %s type veth peer name vrouter netns %s\naddr add %s dev %s\nlink set %s up\n",
			leg, s.switchNS(), netip.PrefixFrom(routerAddr(subnet), subnet.Bits()), leg, leg)
		if err := runCmd(ctx, batch, "nsenter", "--net="+n.routerNS(), "ip", "-batch", "-"); err != nil {
			return nil, fmt.Errorf("failed to create the router's leg on %s: %w", subnet, err)
		}
		if err := runCmd(ctx, fmt.Sprintf("link set vrouter master %s\nlink set vrouter up\n", bridgeName), "nsenter", "--net="+s.switchNS(), "ip", "-batch", "-"); err != nil {
			return nil, fmt.Errorf("failed to attach the router to the switch of %s: %w", subnet, err)
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

// setupNATRouter creates the own router of NAT site s: a leg on the first
// network at s.PublicAddr, a leg on the site, and masquerading out of the
// first with only answers let back in. Like a gateway it drops what is
// sent to itself unasked: a packet it took would leave a connection
// tracking entry that makes the next outbound packet of the same ports
// leave from another port, and hole punching fail.
func (n *Net) setupNATRouter(ctx context.Context, s *Site) error {
	if err := makeNamespaces(ctx, filepath.Join(s.dir, "router"), false); err != nil {
		return err
	}
	batch := fmt.Sprintf(`link set lo up
link add main type veth peer name vnat%[1]d netns %[2]s
addr add %[3]s dev main
link set main up
link add site type veth peer name vrouter netns %[4]s
addr add %[5]s dev site
link set site up
`, s.index, n.switchNS(), netip.PrefixFrom(s.PublicAddr(), n.subnet.Bits()), s.switchNS(), netip.PrefixFrom(routerAddr(s.subnet), s.subnet.Bits()))
	if err := runCmd(ctx, batch, "nsenter", "--net="+s.natRouterNS(), "ip", "-batch", "-"); err != nil {
		return fmt.Errorf("failed to create the legs of the NAT router of %s: %w", s.subnet, err)
	}
	if err := runCmd(ctx, fmt.Sprintf("link set vnat%d master %s\nlink set vnat%d up\n", s.index, bridgeName, s.index), "nsenter", "--net="+n.switchNS(), "ip", "-batch", "-"); err != nil {
		return fmt.Errorf("failed to attach the NAT router of %s to the first switch: %w", s.subnet, err)
	}
	if err := runCmd(ctx, fmt.Sprintf("link set vrouter master %s\nlink set vrouter up\n", bridgeName), "nsenter", "--net="+s.switchNS(), "ip", "-batch", "-"); err != nil {
		return fmt.Errorf("failed to attach the NAT router to the switch of %s: %w", s.subnet, err)
	}
	if err := runCmd(ctx, "", "nsenter", "--net="+s.natRouterNS(), "sh", "-ec", "echo 1 > /proc/sys/net/ipv4/ip_forward"); err != nil {
		return fmt.Errorf("failed to enable forwarding in the NAT router of %s: %w", s.subnet, err)
	}
	rules := fmt.Sprintf(`table ip %[1]s-nat {
 chain post {
  type nat hook postrouting priority srcnat; policy accept;
  oifname "main" ip saddr %[2]s masquerade
 }
}
table inet %[1]s {
 chain forward {
  type filter hook forward priority 0; policy drop;
  iifname "site" oifname "main" accept
  iifname "main" oifname "site" ct state established,related accept
 }
 chain input {
  type filter hook input priority 0; policy drop;
  iifname "lo" accept
  ct state established,related accept
 }
}
`, routerTable, s.subnet)
	if err := runCmd(ctx, rules, "nsenter", "--net="+s.natRouterNS(), "nft", "-f", "-"); err != nil {
		return fmt.Errorf("failed to set up the NAT of %s: %w", s.subnet, err)
	}
	return nil
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
