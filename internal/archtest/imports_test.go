// Package archtest checks the layout rules of docs/architecture.md against
// the code: the table there says which project packages each package may
// import, and this test reads that table, so the doc is the one truth.
package archtest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

const module = "github.com/meshnet/mesh"

// rule is one row of the table: nil allow with any set means anything.
type rule struct {
	any   bool
	allow []string // package paths; a trailing "/" allows the whole subtree
}

var backticked = regexp.MustCompile("`([^`]+)`")

// readRules parses the "| package | job | may import |" table.
func readRules(t *testing.T, doc string) map[string]rule {
	t.Helper()
	f, err := os.Open(doc)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rules := map[string]rule{}
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "| package | job | may import |") {
			in = true
			continue
		}
		if !in {
			continue
		}
		if !strings.HasPrefix(line, "|") {
			break
		}
		cols := strings.Split(line, "|")
		if len(cols) < 5 || strings.HasPrefix(strings.TrimSpace(cols[1]), "---") {
			continue
		}
		var r rule
		switch may := strings.TrimSpace(cols[3]); may {
		case "anything":
			r.any = true
		case "nothing of the project":
		default:
			for _, m := range backticked.FindAllStringSubmatch(may, -1) {
				r.allow = append(r.allow, m[1])
			}
			if len(r.allow) == 0 {
				t.Fatalf("%s: cannot read the rule %q (write `pkg/`, anything, or nothing of the project)", doc, may)
			}
		}
		for _, m := range backticked.FindAllStringSubmatch(cols[1], -1) {
			rules[strings.TrimSuffix(m[1], "/")] = r
		}
	}
	if len(rules) == 0 {
		t.Fatalf("%s has no package table", doc)
	}
	return rules
}

func (r rule) allows(pkg, imp string) bool {
	if r.any || imp == pkg || strings.HasPrefix(imp, pkg+"/") {
		return true
	}
	for _, a := range r.allow {
		if imp == strings.TrimSuffix(a, "/") || (strings.HasSuffix(a, "/") && strings.HasPrefix(imp, a)) {
			return true
		}
	}
	return false
}

// ruleFor returns the rule of pkg's own row, else of its nearest parent's.
func ruleFor(rules map[string]rule, pkg string) (rule, string, bool) {
	for p := pkg; p != "." && p != ""; p = filepath.Dir(p) {
		if r, ok := rules[p]; ok {
			return r, p, true
		}
	}
	return rule{}, "", false
}

type listed struct {
	ImportPath string
	GoFiles    []string
	Imports    []string
}

func TestImportRules(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	rules := readRules(t, filepath.Join(root, "docs", "architecture.md"))
	cmd := exec.Command("go", "list", "-e", "-json", "./...")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(out))
	checked := 0
	for dec.More() {
		var p listed
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		if len(p.GoFiles) == 0 {
			continue // test-only or build-tagged packages
		}
		pkg := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")
		r, row, ok := ruleFor(rules, pkg)
		if !ok {
			t.Errorf("package %s has no row in docs/architecture.md's package table: add one saying its job and what it may import", pkg)
			continue
		}
		checked++
		for _, imp := range p.Imports {
			rel, ok := strings.CutPrefix(imp, module+"/")
			if !ok {
				continue
			}
			if !r.allows(row, rel) {
				t.Errorf("%s imports %s, which the row of %s in docs/architecture.md does not allow", pkg, rel, row)
			}
		}
	}
	if checked < 10 {
		t.Fatalf("checked only %d packages; the listing looks wrong", checked)
	}
}

// TestRuleReading makes sure the parser does not silently allow too much.
func TestRuleReading(t *testing.T) {
	r := rule{allow: []string{"crypto/", "internal/"}}
	for _, tt := range []struct {
		imp  string
		want bool
	}{{"crypto", true}, {"internal/atomicfile", true}, {"ipam", false}, {"cryptox", false}, {"mesh/sub", true}} {
		if got := r.allows("mesh", tt.imp); got != tt.want {
			t.Errorf("allows(mesh, %s) = %v, want %v", tt.imp, got, tt.want)
		}
	}
}

// TestCryptoDoesNoFileIO: crypto/ is a leaf of pure derivations; the files
// that hold keys are package identity's (docs/architecture.md's table).
func TestCryptoDoesNoFileIO(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "list", "-json", "./crypto")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var p listed
	if err := json.Unmarshal(out, &p); err != nil {
		t.Fatal(err)
	}
	if len(p.Imports) == 0 {
		t.Fatalf("go list shows no imports of crypto: the listing looks wrong")
	}
	for _, imp := range p.Imports {
		switch imp {
		case "os", "io/fs", "path/filepath", "io/ioutil", "syscall", "golang.org/x/sys/unix":
			t.Errorf("crypto imports %s: file I/O belongs in package identity", imp)
		}
	}
}

// TestDaemonLinksOnlyWhatItNeeds guards the daemon's idle memory
// (docs/performance.md, "Idle memory"): every package linked costs its
// init and the binary pages it touches. The generated Kubernetes clientset
// and informer factory link every API group (~13 MB of binary, ~9 MB of
// RSS; kube/ builds the few clients it needs instead), and the Prometheus
// client library with the protobuf runtime it brings about 4 MiB of RSS
// (internal/promtext writes the format instead).
func TestDaemonLinksOnlyWhatItNeeds(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	banned := []string{
		"k8s.io/client-go/kubernetes", "k8s.io/client-go/informers", "k8s.io/client-go/applyconfigurations",
		"github.com/prometheus/client_golang", "google.golang.org/protobuf",
	}
	for _, tt := range []struct {
		name, tags string
		banned     []string
	}{
		{"mesh-kube", "", banned},
		// make build's mesh: no Kubernetes package at all, whose init
		// alone touches about 7 MiB of the binary (it runs mesh-kube for
		// --kube).
		{"mesh", "mesh_omit_kube", append(banned, "k8s.io")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, err := exec.Command("go", "list", "-tags", tt.tags, "-deps", module+"/cmd/mesh").Output()
			if err != nil {
				t.Fatalf("go list: %v", err)
			}
			pkgs := strings.Fields(string(out))
			if len(pkgs) < 100 {
				t.Fatalf("go list -deps gave %d packages; the listing looks wrong", len(pkgs))
			}
			for _, pkg := range pkgs {
				for _, b := range tt.banned {
					if pkg == b || strings.HasPrefix(pkg, b+"/") {
						t.Errorf("cmd/mesh (tags %q) depends on %s (find the importer with go list -tags %q -deps -f '{{.ImportPath}}: {{.Imports}}')", tt.tags, pkg, tt.tags)
					}
				}
			}
		})
	}
}
