// Package e2e holds the end-to-end tests of the real binaries on simulated
// hosts (see internal/testnet). They need root; under CI=true they never
// skip.
package e2e
