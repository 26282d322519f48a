package policy

import (
	"cmp"
	"net/netip"
	"slices"
)

// delta is the change from the ruleset in the table to the next one, as
// the nftables operations that make it: a change of the cluster touches
// the elements, chains and counters it changes, not the whole table. Chains
// are named by their content (Build), so a chain of one name never changes
// its rules; sets and maps are changed element by element.
type delta struct {
	addCounters []Counter
	delCounters []string

	addSets []Set    // new sets (also redefined ones), with all their elements
	delSets []string // sets gone (also redefined ones, deleted before their new form is added)
	elems   []setElems

	addChains []Chain // new chains with their rules
	// flush lists the chains emptied first because a set they use is
	// redefined; those of them still wanted get their rules again.
	flush     []string
	refill    []Chain
	delChains []string

	maps    [3]mapElems // ingress, egress, deny (of both families, as in Ruleset)
	selfDel []netip.Addr
	selfAdd []netip.Addr
}

// setElems is the change of the elements of a set that stays.
type setElems struct {
	set        Set // the set, without elements
	delR, addR []ipRange
	delT, addT []AddrPortal
}

// mapElems is the change of a verdict map: elements removed (also those
// changing chain) and added.
type mapElems struct {
	del, add []MapElem
}

// diffRulesets computes the delta from old (in the table) to rs.
func diffRulesets(old, rs *Ruleset) *delta {
	d := &delta{}

	oldCtr := map[string]bool{}
	for _, c := range old.Counters {
		oldCtr[c.Name] = true
	}
	newCtr := map[string]bool{}
	for _, c := range rs.Counters {
		newCtr[c.Name] = true
		if !oldCtr[c.Name] {
			d.addCounters = append(d.addCounters, c)
		}
	}
	for _, c := range old.Counters {
		if !newCtr[c.Name] {
			d.delCounters = append(d.delCounters, c.Name)
		}
	}

	oldSets := map[string]*Set{}
	for i := range old.Sets {
		oldSets[old.Sets[i].Name] = &old.Sets[i]
	}
	redefined := map[string]bool{}
	newSets := map[string]bool{}
	for _, s := range rs.Sets {
		newSets[s.Name] = true
		o := oldSets[s.Name]
		switch {
		case o == nil:
			d.addSets = append(d.addSets, s)
		case o.Kind != s.Kind || o.Family != s.Family || o.Comment != s.Comment:
			redefined[s.Name] = true
			d.delSets = append(d.delSets, s.Name)
			d.addSets = append(d.addSets, s)
		default:
			e := setElems{set: s.bare()}
			e.delR, e.addR = sortedDiff(o.Ranges, s.Ranges, cmpRange)
			e.delT, e.addT = sortedDiff(o.Triples, s.Triples, cmpPortal)
			if len(e.delR)+len(e.addR)+len(e.delT)+len(e.addT) > 0 {
				d.elems = append(d.elems, e)
			}
		}
	}
	for _, s := range old.Sets {
		if !newSets[s.Name] {
			d.delSets = append(d.delSets, s.Name)
		}
	}

	oldChains := map[string]*Chain{}
	for i := range old.Chains {
		oldChains[old.Chains[i].Name] = &old.Chains[i]
	}
	newChains := map[string]bool{}
	for _, c := range rs.Chains {
		newChains[c.Name] = true
		o := oldChains[c.Name]
		switch {
		case o == nil:
			d.addChains = append(d.addChains, c)
		case !slices.Equal(o.Rules, c.Rules) || usesAny(*o, redefined):
			// Content-named chains keep their rules; this is a name
			// that came back with other rules, or one whose set is
			// made anew.
			d.flush = append(d.flush, c.Name)
			d.refill = append(d.refill, c)
		}
	}
	for _, c := range old.Chains {
		if newChains[c.Name] {
			continue
		}
		d.delChains = append(d.delChains, c.Name)
		if usesAny(c, redefined) {
			d.flush = append(d.flush, c.Name) // its rules hold the set
		}
	}

	for i, pair := range [][2][]MapElem{{old.Ingress, rs.Ingress}, {old.Egress, rs.Egress}, {old.Deny, rs.Deny}} {
		d.maps[i].del, d.maps[i].add = sortedDiff(pair[0], pair[1], cmpMapElem)
	}
	d.selfDel, d.selfAdd = sortedDiff(old.Self, rs.Self, netip.Addr.Compare)
	return d
}

// usesAny reports whether a rule of c refers to one of the sets.
func usesAny(c Chain, sets map[string]bool) bool {
	for _, r := range c.Rules {
		if sets[r.PeerSet] || sets[r.TripleSet] {
			return true
		}
	}
	return false
}

// sortedDiff returns the elements only in a and those only in b, both
// sorted by cmp (as a Ruleset keeps them).
func sortedDiff[T any](a, b []T, cmp func(T, T) int) (onlyA, onlyB []T) {
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		switch c := cmp(a[i], b[j]); {
		case c < 0:
			onlyA = append(onlyA, a[i])
			i++
		case c > 0:
			onlyB = append(onlyB, b[j])
			j++
		default:
			i++
			j++
		}
	}
	return append(onlyA, a[i:]...), append(onlyB, b[j:]...)
}

func cmpRange(a, b ipRange) int { return cmp.Or(a.lo.Compare(b.lo), a.hi.Compare(b.hi)) }

func cmpPortal(a, b AddrPortal) int {
	return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Port, b.Port))
}

// cmpMapElem orders by address, then chain: an element whose chain
// changed is in both results (deleted, then added).
func cmpMapElem(a, b MapElem) int {
	return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Chain, b.Chain))
}

// ops counts the nftables operations of d: each object added or deleted,
// each chain flushed, each rule written and each element added or deleted.
// It is the measure of the work of one change (TestApplyWorkPerChange).
func (d *delta) ops() int {
	n := len(d.addCounters) + len(d.delCounters) + len(d.delSets) + len(d.flush) + len(d.delChains)
	for _, s := range d.addSets {
		n += 1 + len(s.Ranges) + len(s.Triples)
	}
	for _, e := range d.elems {
		n += len(e.delR) + len(e.addR) + len(e.delT) + len(e.addT)
	}
	for _, c := range d.addChains {
		n += 1 + len(c.Rules)
	}
	for _, c := range d.refill {
		n += len(c.Rules)
	}
	for _, m := range d.maps {
		n += len(m.del) + len(m.add)
	}
	return n + len(d.selfDel) + len(d.selfAdd)
}

// empty reports whether d changes nothing.
func (d *delta) empty() bool { return d.ops() == 0 }

// fullOps counts the operations of programming rs from nothing: the
// measure of a whole-table rewrite.
func fullOps(rs *Ruleset) int {
	return diffRulesets(&Ruleset{}, rs).ops()
}
