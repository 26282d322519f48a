//go:build !mesh_omit_kube

package policy

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// State is what Build needs of the API: every pod, namespace and network
// policy of the cluster, and the name of this node.
type State struct {
	Node       string
	Pods       []*corev1.Pod
	Namespaces []*corev1.Namespace
	Policies   []*networkingv1.NetworkPolicy
}

// maxObjName is the longest name nftables accepts for sets, chains and
// objects (NFT_*_MAXNAMELEN, 256 with the NUL).
const maxObjName = 255

// metadataNameLabel is set by the API server on every namespace.
const metadataNameLabel = "kubernetes.io/metadata.name"

type podInfo struct {
	key    string // namespace/name
	ns     string
	labels labels.Set
	addrs  []netip.Addr // one or one of each family, the IPv4 one first
	ports  []namedPort
}

type namedPort struct {
	name  string
	proto uint8
	port  uint16
}

type portSpec struct {
	proto  uint8
	lo, hi uint16 // lo 0: all ports
	name   string // named port, resolved per destination pod
}

type compiledRule struct {
	index           int
	peersRestricted bool       // the rule lists peers: only those are allowed
	blocks          []ipRange  // the ipBlock peers
	selectors       []peerSel  // the pod and namespace selector peers
	ranges          []ipRange  // blocks and the selected pods' addresses, after resolve (mergeRanges)
	peerPods        []*podInfo // the selected pods, after resolve
	portsRestricted bool       // the rule lists ports: only those are allowed
	ports           []portSpec
}

// peerSel is a peer given by selectors: pods matching pod (everything when
// the peer has only a namespaceSelector) in the namespaces matching ns, or
// in the policy's namespace when ns is nil.
type peerSel struct {
	pod, ns labels.Selector
}

type compiledPolicy struct {
	id       string // names its sets: stable while the policy exists
	key      string
	ns       string
	sel      labels.Selector
	ingress  bool
	egress   bool
	in, eg   []compiledRule
	status   *PolicyStatus
	counter  string
	selected int
}

type builder struct {
	st        State
	rs        *Ruleset
	nsLabels  map[string]labels.Set
	pods      []*podInfo            // every pod that can be a peer, sorted by key
	podsByNS  map[string][]*podInfo // the same by namespace
	nsNames   []string              // the keys of podsByNS, sorted
	local     []*podInfo            // pods of this node subject to policies
	localByNS map[string][]*podInfo
	sets      map[string]bool
	empty     map[string]bool // named-port sets without elements: not made
	counters  map[string]bool
	ids       map[string]string // policy IDs: the policy's key
}

// Build computes the ruleset enforcing st's policies for st.Node's pods. It
// never fails: invalid parts of a policy are skipped (allowing nothing) and
// reported in the policy's Warnings.
func Build(st State) *Ruleset {
	b := &builder{
		st:        st,
		rs:        &Ruleset{},
		nsLabels:  map[string]labels.Set{},
		podsByNS:  map[string][]*podInfo{},
		localByNS: map[string][]*podInfo{},
		sets:      map[string]bool{},
		empty:     map[string]bool{},
		counters:  map[string]bool{},
		ids:       map[string]string{},
	}
	b.indexNamespaces()
	b.indexPods()
	pols := b.compilePolicies()
	b.buildChains(pols)
	for _, p := range pols {
		if p.selected > 0 || len(p.status.Warnings) > 0 {
			b.rs.Policies = append(b.rs.Policies, *p.status)
		}
	}
	slices.SortFunc(b.rs.Self, netip.Addr.Compare)
	b.pruneSets()
	slices.SortFunc(b.rs.Counters, func(a, c Counter) int { return cmp.Compare(a.Name, c.Name) })
	slices.SortFunc(b.rs.Sets, func(a, c Set) int { return cmp.Compare(a.Name, c.Name) })
	return b.rs
}

func (b *builder) indexNamespaces() {
	for _, ns := range b.st.Namespaces {
		l := labels.Set{}
		for k, v := range ns.Labels {
			l[k] = v
		}
		l[metadataNameLabel] = ns.Name
		b.nsLabels[ns.Name] = l
	}
}

// nsLabelsOf returns a namespace's labels; one not (yet) in the cache has
// only the name label the API server would give it.
func (b *builder) nsLabelsOf(ns string) labels.Set {
	if l, ok := b.nsLabels[ns]; ok {
		return l
	}
	return labels.Set{metadataNameLabel: ns}
}

func (b *builder) indexPods() {
	for _, h := range holders(b.st.Pods) {
		b.pods = append(b.pods, h.info)
		if h.pod.Spec.NodeName == b.st.Node {
			b.local = append(b.local, h.info)
		}
	}
	byKey := func(a, c *podInfo) int { return cmp.Compare(a.key, c.key) }
	slices.SortFunc(b.pods, byKey)
	slices.SortFunc(b.local, byKey)
	for _, p := range b.pods {
		if len(b.podsByNS[p.ns]) == 0 {
			b.nsNames = append(b.nsNames, p.ns)
		}
		b.podsByNS[p.ns] = append(b.podsByNS[p.ns], p)
	}
	for _, p := range b.local {
		b.localByNS[p.ns] = append(b.localByNS[p.ns], p)
	}
}

// holder is a pod that policies see, with what they need of it.
type holder struct {
	pod  *corev1.Pod
	info *podInfo
}

// holders returns the pods that policies see (podInfoOf), in the order of
// pods. An address belongs to one pod: a released address is handed out
// again while the old pod may still be Terminating in the API, and the old
// pod's identity must not grant the new one its access (nor would two
// local pods with one address fit in the maps). Of the pods claiming an
// address, holdsAddress picks one, and a pod is seen only if it holds
// every address it has: a dual-stack pod that lost one of its addresses
// is an old pod whose addresses were released together (CNI DEL releases
// both families).
func holders(pods []*corev1.Pod) []holder {
	infos := make([]*podInfo, len(pods))
	best := make(map[netip.Addr]int, len(pods))
	for i, p := range pods {
		infos[i] = podInfoOf(p)
		if infos[i] == nil {
			continue
		}
		for _, a := range infos[i].addrs {
			if j, ok := best[a]; !ok || holdsAddress(p, pods[j]) {
				best[a] = i
			}
		}
	}
	var out []holder
	for i, info := range infos {
		if info != nil && !slices.ContainsFunc(info.addrs, func(a netip.Addr) bool { return best[a] != i }) {
			out = append(out, holder{pods[i], info})
		}
	}
	return out
}

// holdsAddress reports whether pod p rather than q holds the address both
// claim: one not being deleted over one being deleted, then the newer,
// then (for a stable result) the lower namespace/name.
func holdsAddress(p, q *corev1.Pod) bool {
	if (p.DeletionTimestamp == nil) != (q.DeletionTimestamp == nil) {
		return p.DeletionTimestamp == nil
	}
	if !p.CreationTimestamp.Equal(&q.CreationTimestamp) {
		return q.CreationTimestamp.Before(&p.CreationTimestamp)
	}
	return p.Namespace+"/"+p.Name < q.Namespace+"/"+q.Name
}

// podInfoOf returns what policies need of a pod, or nil if the pod is not
// subject to policies and cannot be a peer: no address yet, host network,
// or finished (its address may be reused). Its addresses are the first of
// each family of PodIP and PodIPs; strings that are not a plain IPv4 or
// IPv6 address (a zone, an IPv4-mapped IPv6 address) are ignored.
func podInfoOf(p *corev1.Pod) *podInfo {
	if p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return nil
	}
	var byFamily [len(families)]netip.Addr
	ips := []string{p.Status.PodIP}
	for _, ip := range p.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	for _, s := range ips {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" || a.Is4In6() {
			continue
		}
		if f := familyOf(a); !byFamily[f].IsValid() {
			byFamily[f] = a
		}
	}
	var addrs []netip.Addr
	for _, a := range byFamily {
		if a.IsValid() {
			addrs = append(addrs, a)
		}
	}
	if len(addrs) == 0 {
		return nil
	}
	info := &podInfo{key: p.Namespace + "/" + p.Name, ns: p.Namespace, labels: labels.Set(p.Labels), addrs: addrs}
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			proto, ok := protoNumber(cp.Protocol)
			if cp.Name == "" || !ok || cp.ContainerPort < 1 || cp.ContainerPort > 65535 {
				continue
			}
			info.ports = append(info.ports, namedPort{cp.Name, proto, uint16(cp.ContainerPort)})
		}
	}
	return info
}

func protoNumber(p corev1.Protocol) (uint8, bool) {
	switch p {
	case "", corev1.ProtocolTCP:
		return protoTCP, true
	case corev1.ProtocolUDP:
		return protoUDP, true
	case corev1.ProtocolSCTP:
		return protoSCTP, true
	}
	return 0, false
}

func (b *builder) compilePolicies() []*compiledPolicy {
	pols := slices.Clone(b.st.Policies)
	slices.SortFunc(pols, func(a, c *networkingv1.NetworkPolicy) int {
		return cmp.Or(cmp.Compare(a.Namespace, c.Namespace), cmp.Compare(a.Name, c.Name))
	})
	var out []*compiledPolicy
	for i, np := range pols {
		if i > 0 && pols[i-1].Namespace == np.Namespace && pols[i-1].Name == np.Name {
			continue
		}
		out = append(out, b.compilePolicy(np))
	}
	return out
}

// compilePolicy parses a policy. Its peers are resolved to pods only if
// it selects a pod of this node (resolve): the cost of a policy of other
// nodes is its parsing, never a pass over the pods of the cluster.
func (b *builder) compilePolicy(np *networkingv1.NetworkPolicy) *compiledPolicy {
	key := np.Namespace + "/" + np.Name
	p := &compiledPolicy{
		id:     b.policyID(key),
		key:    key,
		ns:     np.Namespace,
		status: &PolicyStatus{Namespace: np.Namespace, Name: np.Name, Types: []string{}, Pods: []string{}},
	}
	p.counter = counterName("policy:", p.key)
	warn := func(format string, args ...any) {
		p.status.Warnings = append(p.status.Warnings, fmt.Sprintf(format, args...))
	}
	if len(np.Spec.PolicyTypes) == 0 {
		p.ingress = true
		p.egress = len(np.Spec.Egress) > 0
	}
	for _, t := range np.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			p.ingress = true
		case networkingv1.PolicyTypeEgress:
			p.egress = true
		default:
			warn("unknown policy type %q ignored", t)
		}
	}
	if p.ingress {
		p.status.Types = append(p.status.Types, string(networkingv1.PolicyTypeIngress))
	}
	if p.egress {
		p.status.Types = append(p.status.Types, string(networkingv1.PolicyTypeEgress))
	}
	sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	if err != nil {
		warn("invalid podSelector, the policy selects no pod: %v", err)
		return p
	}
	p.sel = sel
	if p.ingress {
		for i, r := range np.Spec.Ingress {
			p.in = append(p.in, b.compileRule(p, i, r.From, r.Ports, fmt.Sprintf("ingress[%d]", i), warn))
		}
	}
	if p.egress {
		for i, r := range np.Spec.Egress {
			p.eg = append(p.eg, b.compileRule(p, i, r.To, r.Ports, fmt.Sprintf("egress[%d]", i), warn))
		}
	}
	return p
}

func (b *builder) compileRule(p *compiledPolicy, idx int, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort, where string, warn func(string, ...any)) compiledRule {
	r := compiledRule{index: idx, peersRestricted: len(peers) > 0, portsRestricted: len(ports) > 0}
	for i, peer := range peers {
		at := fmt.Sprintf("%s peer %d", where, i)
		if peer.IPBlock != nil {
			if peer.PodSelector != nil || peer.NamespaceSelector != nil {
				warn("%s: ipBlock with a selector is invalid, skipped", at)
				continue
			}
			rs, err := ipBlockRanges(peer.IPBlock)
			if err != nil {
				warn("%s: %v, skipped", at, err)
				continue
			}
			r.blocks = append(r.blocks, rs...)
			continue
		}
		if peer.PodSelector == nil && peer.NamespaceSelector == nil {
			warn("%s: empty peer, skipped", at)
			continue
		}
		podSel := labels.Everything()
		if peer.PodSelector != nil {
			s, err := metav1.LabelSelectorAsSelector(peer.PodSelector)
			if err != nil {
				warn("%s: invalid podSelector, skipped: %v", at, err)
				continue
			}
			podSel = s
		}
		var nsSel labels.Selector
		if peer.NamespaceSelector != nil {
			s, err := metav1.LabelSelectorAsSelector(peer.NamespaceSelector)
			if err != nil {
				warn("%s: invalid namespaceSelector, skipped: %v", at, err)
				continue
			}
			nsSel = s
		}
		r.selectors = append(r.selectors, peerSel{pod: podSel, ns: nsSel})
	}
	r.ranges = mergeRanges(r.blocks)
	for i, port := range ports {
		ps, err := parsePort(port)
		if err != nil {
			warn("%s port %d: %v, skipped", where, i, err)
			continue
		}
		r.ports = append(r.ports, ps)
	}
	return r
}

// resolve finds the pods of the selector peers of p's rules.
func (b *builder) resolve(p *compiledPolicy) {
	for _, rules := range [][]compiledRule{p.in, p.eg} {
		for i := range rules {
			b.resolveRule(p, &rules[i])
		}
	}
}

func (b *builder) resolveRule(p *compiledPolicy, r *compiledRule) {
	ranges := slices.Clone(r.blocks)
	for _, ps := range r.selectors {
		match := func(q *podInfo) {
			if ps.pod.Matches(q.labels) {
				r.peerPods = append(r.peerPods, q)
				for _, a := range q.addrs {
					ranges = append(ranges, addrRange(a))
				}
			}
		}
		if ps.ns == nil {
			for _, q := range b.podsByNS[p.ns] {
				match(q)
			}
			continue
		}
		// Namespaces first: a namespace's pods are looked at only when
		// it matches.
		for _, ns := range b.nsNames {
			if !ps.ns.Matches(b.nsLabelsOf(ns)) {
				continue
			}
			for _, q := range b.podsByNS[ns] {
				match(q)
			}
		}
	}
	r.ranges = mergeRanges(ranges)
}

// policyID names a policy's sets: a hash of "namespace/name", so the names
// do not change when other policies come and go (sets are updated in
// place, see NFT.Apply). Two policies never share one.
func (b *builder) policyID(key string) string {
	h := sha256.Sum256([]byte(key))
	id := hex.EncodeToString(h[:6])
	for i := 1; b.ids[id] != "" && b.ids[id] != key; i++ { // a hash collision
		id = fmt.Sprintf("%s-%d", hex.EncodeToString(h[:6]), i)
	}
	b.ids[id] = key
	return id
}

// ipBlockRanges returns the addresses of an ipBlock, of the family of its
// cidr: an except of the other family cannot overlap it and is ignored.
func ipBlockRanges(blk *networkingv1.IPBlock) ([]ipRange, error) {
	cidr, err := netip.ParsePrefix(blk.CIDR)
	if err != nil {
		return nil, fmt.Errorf("ipBlock cidr %q is not a CIDR", blk.CIDR)
	}
	rs := []ipRange{prefixRange(cidr)}
	for _, e := range blk.Except {
		ex, err := netip.ParsePrefix(e)
		if err != nil {
			return nil, fmt.Errorf("ipBlock except %q is not a CIDR", e)
		}
		rs = subtract(rs, prefixRange(ex))
	}
	return rs, nil
}

func parsePort(p networkingv1.NetworkPolicyPort) (portSpec, error) {
	var ps portSpec
	proto := corev1.ProtocolTCP
	if p.Protocol != nil {
		proto = *p.Protocol
	}
	n, ok := protoNumber(proto)
	if !ok {
		return ps, fmt.Errorf("protocol %q is not TCP, UDP or SCTP", proto)
	}
	ps.proto = n
	if p.Port == nil {
		if p.EndPort != nil {
			return ps, fmt.Errorf("endPort without port")
		}
		return ps, nil
	}
	if p.Port.Type == intstr.String {
		if p.EndPort != nil {
			return ps, fmt.Errorf("endPort with named port %q", p.Port.StrVal)
		}
		if p.Port.StrVal == "" {
			return ps, fmt.Errorf("empty port name")
		}
		ps.name = p.Port.StrVal
		return ps, nil
	}
	if p.Port.IntVal < 1 || p.Port.IntVal > 65535 {
		return ps, fmt.Errorf("port %d out of range", p.Port.IntVal)
	}
	ps.lo, ps.hi = uint16(p.Port.IntVal), uint16(p.Port.IntVal)
	if p.EndPort != nil {
		if *p.EndPort < p.Port.IntVal || *p.EndPort > 65535 {
			return ps, fmt.Errorf("endPort %d not in %d-65535", *p.EndPort, p.Port.IntVal)
		}
		ps.hi = uint16(*p.EndPort)
	}
	return ps, nil
}

// counterName is the nftables name of the counter of key, hashed when too
// long for nftables.
func counterName(prefix, key string) string {
	if len(prefix)+len(key) <= maxObjName {
		return prefix + key
	}
	h := sha256.Sum256([]byte(key))
	return prefix + hex.EncodeToString(h[:16])
}

func (b *builder) addCounter(name, key string, kind CounterKind) {
	if b.counters[name] {
		return
	}
	b.counters[name] = true
	b.rs.Counters = append(b.rs.Counters, Counter{Name: name, Key: key, Kind: kind})
}

func (b *builder) buildChains(pols []*compiledPolicy) {
	type podPols struct{ in, eg []*compiledPolicy }
	sel := map[*podInfo]*podPols{}
	for _, p := range pols {
		if p.sel == nil {
			continue
		}
		for _, q := range b.localByNS[p.ns] {
			if !p.sel.Matches(q.labels) {
				continue
			}
			pp := sel[q]
			if pp == nil {
				pp = &podPols{}
				sel[q] = pp
			}
			if p.ingress {
				pp.in = append(pp.in, p)
			}
			if p.egress {
				pp.eg = append(pp.eg, p)
			}
			p.selected++
			p.status.Pods = append(p.status.Pods, q.key)
		}
		if p.selected > 0 {
			b.addCounter(p.counter, p.key, CounterPolicy)
			b.resolve(p)
		}
	}
	chains := map[string]string{} // prefix and rules text -> chain name
	taken := map[string]bool{}    // chain names
	var denyPods []*podInfo
	// A chain is named by a hash of its content, so that it keeps its
	// name while other pods and policies change, and a change of the
	// table touches only what changed (NFT.Apply).
	chainFor := func(prefix string, rules []Rule) string {
		var text strings.Builder
		for _, r := range rules {
			text.WriteString(r.String())
			text.WriteByte('\n')
		}
		key := prefix + "\n" + text.String()
		if name, ok := chains[key]; ok {
			return name
		}
		h := sha256.Sum256([]byte(key))
		name := prefix + "-" + hex.EncodeToString(h[:6])
		for i := 1; taken[name]; i++ { // a hash collision: still one name per content
			name = fmt.Sprintf("%s-%s-%d", prefix, hex.EncodeToString(h[:6]), i)
		}
		taken[name] = true
		chains[key] = name
		b.rs.Chains = append(b.rs.Chains, Chain{Name: name, Rules: rules})
		return name
	}
	// Each address of a pod gets the chains of its family: the rules
	// matching peers' addresses differ, those that match none are the
	// same (and the chains of a pod's two families are then one).
	for _, q := range b.local {
		pp := sel[q]
		if pp == nil {
			continue
		}
		for _, a := range q.addrs {
			f := familyOf(a)
			if len(pp.in) > 0 {
				rules := b.ingressRules(q, pp.in, f)
				b.rs.Ingress = append(b.rs.Ingress, MapElem{a, chainFor("ingress", rules)})
				b.rs.Self = append(b.rs.Self, a)
			}
			if len(pp.eg) > 0 {
				rules := b.egressRules(pp.eg, f)
				b.rs.Egress = append(b.rs.Egress, MapElem{a, chainFor("egress", rules)})
			}
		}
		if len(pp.in) > 1 || len(pp.eg) > 1 {
			denyPods = append(denyPods, q)
		}
	}
	for _, q := range denyPods {
		ctr := counterName("pod:", q.key)
		b.addCounter(ctr, q.key, CounterPod)
		name := chainFor("deny", []Rule{{Counter: ctr, Verdict: Drop, Comment: "default deny " + q.key}})
		for _, a := range q.addrs {
			b.rs.Deny = append(b.rs.Deny, MapElem{a, name})
		}
	}
	byAddr := func(a, c MapElem) int { return a.Addr.Compare(c.Addr) }
	slices.SortFunc(b.rs.Ingress, byAddr)
	slices.SortFunc(b.rs.Egress, byAddr)
	slices.SortFunc(b.rs.Deny, byAddr)
}

// finalRule drops what no rule allowed, counted for the policy when there
// is one, else for the pod (in the Deny map of family fam).
func finalRule(pols []*compiledPolicy, f Field, fam Family) Rule {
	if len(pols) == 1 {
		return Rule{Counter: pols[0].counter, Verdict: Drop, Comment: "default deny " + pols[0].key}
	}
	return Rule{Field: f, Family: fam, DenyMap: true}
}

// setName names a set of policy p: p-<id>-<what> for IPv4, p6-<id>-<what>
// for IPv6.
func setName(p *compiledPolicy, f Family, what string) string {
	return fmt.Sprintf("p%s-%s-%s", f.tag(), p.id, what)
}

func (b *builder) peerSet(p *compiledPolicy, r compiledRule, dir string, f Family) string {
	name := setName(p, f, fmt.Sprintf("%s%d", dir, r.index))
	if !b.sets[name] {
		b.sets[name] = true
		b.rs.Sets = append(b.rs.Sets, Set{Name: name, Comment: fmt.Sprintf("%s %s[%d]", p.key, dirName(dir), r.index), Kind: SetAddrs, Family: f, Ranges: rangesOf(r.ranges, f)})
	}
	return name
}

func dirName(dir string) string {
	if dir == "in" {
		return "ingress"
	}
	return "egress"
}

// ingressRules are the rules of q's ingress chain of family f.
func (b *builder) ingressRules(q *podInfo, pols []*compiledPolicy, f Family) []Rule {
	var rules []Rule
	for _, p := range pols {
		for _, r := range p.in {
			if r.peersRestricted && len(rangesOf(r.ranges, f)) == 0 {
				continue // allows nothing of this family
			}
			base := Rule{Field: Saddr, Verdict: Accept, Comment: fmt.Sprintf("%s ingress[%d]", p.key, r.index)}
			if r.peersRestricted {
				base.Family, base.PeerSet = f, b.peerSet(p, r, "in", f)
			}
			if !r.portsRestricted {
				rules = append(rules, base)
				continue
			}
			for _, ps := range r.ports {
				if ps.name == "" {
					rr := base
					rr.Proto, rr.PortLo, rr.PortHi = ps.proto, ps.lo, ps.hi
					rules = appendUnique(rules, rr)
					continue
				}
				for _, np := range q.ports {
					if np.name == ps.name && np.proto == ps.proto {
						rr := base
						rr.Proto, rr.PortLo, rr.PortHi = np.proto, np.port, np.port
						rules = appendUnique(rules, rr)
					}
				}
			}
		}
	}
	return append(rules, finalRule(pols, Daddr, f))
}

// egressRules are the rules of an egress chain of family f.
func (b *builder) egressRules(pols []*compiledPolicy, f Family) []Rule {
	var rules []Rule
	for _, p := range pols {
		for _, r := range p.eg {
			if r.peersRestricted && len(rangesOf(r.ranges, f)) == 0 {
				continue
			}
			base := Rule{Field: Daddr, Verdict: Return, Comment: fmt.Sprintf("%s egress[%d]", p.key, r.index)}
			if r.peersRestricted {
				base.Family, base.PeerSet = f, b.peerSet(p, r, "eg", f)
			}
			if !r.portsRestricted {
				rules = append(rules, base)
				continue
			}
			for k, ps := range r.ports {
				rr := base
				if ps.name == "" {
					rr.Proto, rr.PortLo, rr.PortHi = ps.proto, ps.lo, ps.hi
					rules = appendUnique(rules, rr)
					continue
				}
				// A named port is resolved per destination: the set holds
				// each peer pod's address, protocol and port of that name.
				peers := r.peerPods
				if !r.peersRestricted {
					peers = b.pods
				}
				name := setName(p, f, fmt.Sprintf("eg%d-port%d", r.index, k))
				if !b.sets[name] {
					set := Set{Name: name, Comment: fmt.Sprintf("%s egress[%d] port %s", p.key, r.index, ps.name), Kind: SetAddrProtoPort, Family: f}
					for _, q := range peers {
						for _, a := range q.addrs {
							if familyOf(a) != f {
								continue
							}
							for _, np := range q.ports {
								if np.name == ps.name && np.proto == ps.proto {
									set.Triples = append(set.Triples, AddrPortal{a, np.proto, np.port})
								}
							}
						}
					}
					b.sets[name] = true
					if len(set.Triples) == 0 {
						b.empty[name] = true
						continue
					}
					slices.SortFunc(set.Triples, func(a, c AddrPortal) int {
						return cmp.Or(a.Addr.Compare(c.Addr), cmp.Compare(a.Proto, c.Proto), cmp.Compare(a.Port, c.Port))
					})
					set.Triples = slices.Compact(set.Triples)
					b.rs.Sets = append(b.rs.Sets, set)
				}
				if b.empty[name] {
					continue
				}
				// The peer set is implied by the triples.
				rr.PeerSet = ""
				rr.Family, rr.TripleSet = f, name
				rules = appendUnique(rules, rr)
			}
		}
	}
	return append(rules, finalRule(pols, Saddr, f))
}

// pruneSets drops the sets no rule refers to (a rule whose named ports
// resolved to nothing).
func (b *builder) pruneSets() {
	used := map[string]bool{}
	for _, c := range b.rs.Chains {
		for _, r := range c.Rules {
			used[r.PeerSet] = true
			used[r.TripleSet] = true
		}
	}
	b.rs.Sets = slices.DeleteFunc(b.rs.Sets, func(s Set) bool { return !used[s.Name] })
}

func appendUnique(rules []Rule, r Rule) []Rule {
	if slices.Contains(rules, r) {
		return rules
	}
	return append(rules, r)
}
