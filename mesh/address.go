package mesh

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// ParsePeerAddress checks a peer given as "host" or "host:port" (IPv6 in
// brackets when a port is given) and returns it as "host:port", using
// defaultPort when none is given. The host is not resolved here: names are
// resolved each time the peer is tried, so a DNS change is picked up.
func ParsePeerAddress(s string, defaultPort int) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", errors.New("invalid peer address: empty")
	}
	host, port := s, strconv.Itoa(defaultPort)
	if h, p, err := net.SplitHostPort(s); err == nil {
		host, port = h, p
	} else if strings.Count(s, ":") == 1 || strings.HasPrefix(s, "[") {
		return "", fmt.Errorf("invalid peer address %q: %w", s, err)
	}
	host = strings.Trim(host, "[]")
	if host == "" {
		return "", fmt.Errorf("invalid peer address %q: empty host", s)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("invalid peer address %q: port %q is not a number from 1 to 65535", s, port)
	}
	if net.ParseIP(host) == nil && !validHostname(host) {
		return "", fmt.Errorf("invalid peer address %q: %q is neither an IP address nor a host name", s, host)
	}
	return net.JoinHostPort(host, strconv.Itoa(n)), nil
}

// validHostname applies the RFC 1123 rules for host names.
func validHostname(h string) bool {
	if len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(strings.TrimSuffix(h, "."), ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}
