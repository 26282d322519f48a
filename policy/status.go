package policy

// PolicyStatus is one policy as applied on this node, for `mesh status
// policy`.
type PolicyStatus struct {
	Namespace string   `json:"namespace"`
	Name      string   `json:"name"`
	Types     []string `json:"types"`
	Pods      []string `json:"pods"`               // local pods it selects, "namespace/name"
	Warnings  []string `json:"warnings,omitempty"` // parts skipped as invalid
}
