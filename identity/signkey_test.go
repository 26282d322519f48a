package identity

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSigningKey(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "signing.key")
	k1, err := LoadOrCreateSigningKey(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %04o, want 0600", fi.Mode().Perm())
	}
	k2, err := LoadOrCreateSigningKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !k1.Equal(k2) {
		t.Error("a reload made a different key")
	}
	tests := []struct {
		name    string
		content string
		mode    os.FileMode
		want    string
	}{
		{name: "garbage", content: "not a key\n", mode: 0o600, want: "corrupt signing key file"},
		{name: "short seed", content: signKeyPrefix + "AAAA\n", mode: 0o600, want: "not 32 base64 bytes"},
		{name: "readable by others", content: "x", mode: 0o644, want: "chmod 600"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "signing.key")
			if err := os.WriteFile(p, []byte(tc.content), tc.mode); err != nil {
				t.Fatal(err)
			}
			_, err := LoadOrCreateSigningKey(p)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), p) {
				t.Fatalf("error %v, want one naming %s and containing %q", err, p, tc.want)
			}
			if got, _ := os.ReadFile(p); string(got) != tc.content {
				t.Error("the file was changed")
			}
		})
	}
}

func TestBindingsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "identities.json")
	b, err := LoadBindings(path)
	if err != nil || len(b) != 0 {
		t.Fatalf("missing file: %v, %v; want an empty table", b, err)
	}
	key := "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
	if err := SaveBindings(path, map[string]string{"host2": key}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %04o, want 0600", fi.Mode().Perm())
	}
	b, err = LoadBindings(path)
	if err != nil || b["host2"] != key || len(b) != 1 {
		t.Fatalf("reload: %v, %v", b, err)
	}
	tests := []struct {
		name    string
		content string
		want    string
	}{
		{name: "not json", content: "{", want: "corrupt identity bindings"},
		{name: "newer version", content: `{"version":2,"bindings":{}}`, want: "version 2"},
		{name: "bad key", content: `{"version":1,"bindings":{"a":"xyz"}}`, want: `key of "a"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "identities.json")
			if err := os.WriteFile(p, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadBindings(p)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), p) {
				t.Fatalf("error %v, want one naming %s and containing %q", err, p, tc.want)
			}
			if got, _ := os.ReadFile(p); !bytes.Equal(got, []byte(tc.content)) {
				t.Error("the corrupt file was changed: nothing may be lost")
			}
		})
	}
}
