package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meshnet/mesh/api"
	"github.com/meshnet/mesh/ipam"
	"github.com/meshnet/mesh/kube/kubetest"
	"github.com/meshnet/mesh/mesh"
)

// fakeHeld is a heldReleaser: the removed peers holding addresses, and
// the releases asked of it.
type fakeHeld struct {
	holding  []string
	notYet   bool
	released []string
}

func (f *fakeHeld) RemovedHolding() []string { return f.holding }

func (f *fakeHeld) ReleaseRemovedHeld(name string) (int, error) {
	if f.notYet {
		return 0, fmt.Errorf("%w: the heir has not claimed it", ipam.ErrNotYet)
	}
	f.released = append(f.released, name)
	f.holding = slices.DeleteFunc(f.holding, func(n string) bool { return n == name })
	return 3, nil
}

func podOn(name, node string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"}, Spec: corev1.PodSpec{NodeName: node}}
}

// TestReleaseDeletedNodesAddresses: a deleted Node's reservations are
// released only once the API lists none of its pods and not the Node
// again, and its daemon is no live member; the first live node in name
// order asks at once, the next two a round later each, the others never;
// a release the IPAM refuses for now is tried again at the next round.
func TestReleaseDeletedNodesAddresses(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	members := func(states ...string) []mesh.Member {
		var out []mesh.Member
		for i := 0; i+1 < len(states); i += 2 {
			out = append(out, mesh.Member{Name: states[i], State: api.MemberState(states[i+1])})
		}
		return out
	}
	ctx := context.Background()
	t0 := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)

	t.Run("pods first", func(t *testing.T) {
		cs := fake.NewClientset(podOn("web", "gone"), podOn("db", "other"))
		r := newReleaser(kubetest.Client(cs), "a", log)
		held := &fakeHeld{holding: []string{"gone"}}
		view := members("a", "alive", "b", "alive", "gone", "dead")
		r.round(ctx, t0, view, []heldReleaser{held})
		if len(held.released) != 0 {
			t.Fatalf("released %v while the API lists a pod on the node", held.released)
		}
		if err := cs.CoreV1().Pods("default").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		r.round(ctx, t0.Add(releaseCheck), view, []heldReleaser{held})
		if !slices.Equal(held.released, []string{"gone"}) {
			t.Fatalf("released %v once the pods are gone, want [gone]", held.released)
		}
		r.round(ctx, t0.Add(2*releaseCheck), view, []heldReleaser{held})
		if len(held.released) != 1 || len(r.seen) != 0 {
			t.Fatalf("after the release: released %v, remembered %v", held.released, r.seen)
		}
	})

	t.Run("node back", func(t *testing.T) {
		cs := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "gone"}})
		r := newReleaser(kubetest.Client(cs), "a", log)
		held := &fakeHeld{holding: []string{"gone"}}
		r.round(ctx, t0, members("a", "alive", "gone", "dead"), []heldReleaser{held})
		if len(held.released) != 0 {
			t.Fatalf("released %v while its Node exists", held.released)
		}
	})

	t.Run("daemon live", func(t *testing.T) {
		r := newReleaser(kubetest.Client(fake.NewClientset()), "a", log)
		for _, state := range []string{"alive", "suspect"} {
			held := &fakeHeld{holding: []string{"gone"}}
			r.round(ctx, t0, members("a", "alive", "gone", state), []heldReleaser{held})
			if len(held.released) != 0 {
				t.Fatalf("released %v while its daemon is %s", held.released, state)
			}
		}
	})

	t.Run("turns", func(t *testing.T) {
		r := newReleaser(kubetest.Client(fake.NewClientset()), "c", log)
		held := &fakeHeld{holding: []string{"gone"}}
		// c is third among the live members: two rounds after it first
		// saw the candidate.
		view := members("a", "alive", "b", "suspect", "c", "alive", "d", "dead", "gone", "dead")
		for i, want := range []int{0, 0, 1} {
			r.round(ctx, t0.Add(time.Duration(i)*releaseCheck), view, []heldReleaser{held})
			if len(held.released) != want {
				t.Fatalf("round %d: released %v, want %d release(s)", i, held.released, want)
			}
		}
		// e is fourth: it leaves the API alone and waits for the gossip.
		r = newReleaser(kubetest.Client(fake.NewClientset()), "e", log)
		held = &fakeHeld{holding: []string{"gone"}}
		view = members("a", "alive", "b", "alive", "c", "alive", "e", "alive", "gone", "dead")
		for i := range 20 {
			r.round(ctx, t0.Add(time.Duration(i)*releaseCheck), view, []heldReleaser{held})
		}
		if len(held.released) != 0 || len(r.seen) != 0 {
			t.Fatalf("the fourth live node released %v (remembered %v); want none", held.released, r.seen)
		}
	})

	t.Run("not yet", func(t *testing.T) {
		r := newReleaser(kubetest.Client(fake.NewClientset()), "a", log)
		held := &fakeHeld{holding: []string{"gone"}, notYet: true}
		view := members("a", "alive", "gone", "dead")
		r.round(ctx, t0, view, []heldReleaser{held})
		held.notYet = false
		r.round(ctx, t0.Add(releaseCheck), view, []heldReleaser{held})
		if !slices.Equal(held.released, []string{"gone"}) {
			t.Fatalf("released %v after the IPAM refused once, want [gone]", held.released)
		}
	})

	t.Run("both families", func(t *testing.T) {
		r := newReleaser(kubetest.Client(fake.NewClientset()), "a", log)
		v4, v6 := &fakeHeld{holding: []string{"gone"}}, &fakeHeld{holding: []string{"gone", "older"}}
		r.round(ctx, t0, members("a", "alive"), []heldReleaser{v4, v6})
		if !slices.Equal(v4.released, []string{"gone"}) || !slices.Equal(v6.released, []string{"gone", "older"}) {
			t.Fatalf("released %v and %v", v4.released, v6.released)
		}
	})
}
