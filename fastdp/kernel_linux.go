package fastdp

import (
	"fmt"

	"github.com/vishvananda/netlink"
)

// kernelImpl is the WireGuard kernel module: the link is a netlink
// "wireguard" link and the kernel does all the work; wgctrl configures it over
// generic netlink.
type kernelImpl struct {
	name string
	nl   *netlink.Handle
}

func (k *kernelImpl) kind() string { return ModeKernel }

func (k *kernelImpl) ensure(mtu int) (netlink.Link, func() error, error) {
	l, err := linkByName(k.nl, k.name)
	switch {
	case err == nil:
		if l.Type() != "wireguard" {
			return nil, nil, fmt.Errorf("link %q exists and is a %s, not a kernel WireGuard device", k.name, l.Type())
		}
		return l, nil, nil
	case !isNotFound(err):
		return nil, nil, fmt.Errorf("failed to look up link %q: %w", k.name, err)
	}
	la := netlink.NewLinkAttrs()
	la.Name = k.name
	la.MTU = mtu
	if err := k.nl.LinkAdd(&netlink.Wireguard{LinkAttrs: la}); err != nil {
		if kernelUnsupported(err) {
			return nil, nil, fmt.Errorf("failed to create link %q: %w (%v)", k.name, ErrKernelUnavailable, err)
		}
		return nil, nil, fmt.Errorf("failed to create link %q: %w", k.name, err)
	}
	l, err = linkByName(k.nl, k.name)
	if err != nil {
		_ = k.nl.LinkDel(&netlink.Wireguard{LinkAttrs: la})
		return nil, nil, fmt.Errorf("failed to look up link %q after creating it: %w", k.name, err)
	}
	return l, func() error { return k.nl.LinkDel(l) }, nil
}

// close has nothing to stop: the kernel keeps serving the device.
func (k *kernelImpl) close() error { return nil }
