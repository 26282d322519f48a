// Package policy enforces Kubernetes NetworkPolicies for the pods of one
// node in the nftables table "inet mesh-policy": a Controller watches pods,
// namespaces and policies, Build translates them into a Ruleset (verdict
// maps from pod address to per-policy-set chains, interval sets of peers),
// and an Applier (NFT) replaces the table's content in one atomic
// transaction. See docs/policy.md.
package policy
