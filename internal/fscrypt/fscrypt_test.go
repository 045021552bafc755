package fscrypt

import (
	"bytes"
	"errors"
	"testing"

	fsactions "github.com/google/fscrypt/actions"
)

func TestCandidates(t *testing.T) {
	padded := func(s string) []byte {
		b := make([]byte, keyLen)
		copy(b, s)
		return b
	}
	long := string(bytes.Repeat([]byte("k"), 40))
	exact := string(bytes.Repeat([]byte("e"), keyLen))
	for _, tc := range []struct {
		name   string
		src    Source
		secret string
		want   [][]byte
	}{
		{"raw short: zero-padded", RawKey, "short", [][]byte{padded("short")}},
		{"raw long: cut to 32 bytes", RawKey, long, [][]byte{[]byte(long[:keyLen])}},
		{"passphrase: whole, then the old 32-byte form", Passphrase, "short", [][]byte{[]byte("short"), padded("short")}},
		{"passphrase long: whole, then cut", Passphrase, long, [][]byte{[]byte(long), []byte(long[:keyLen])}},
		{"passphrase of 32 bytes: one form", Passphrase, exact, [][]byte{[]byte(exact)}},
	} {
		got := candidates(tc.src, []byte(tc.secret))
		if len(got) != len(tc.want) {
			t.Errorf("%s: %d candidates, want %d", tc.name, len(got), len(tc.want))
			continue
		}
		for i := range got {
			if !bytes.Equal(got[i], tc.want[i]) {
				t.Errorf("%s: candidate %d = %q, want %q", tc.name, i, got[i], tc.want[i])
			}
		}
	}
}

// The library retries a protector with the keys it is handed for as long
// as it gets them: keyFunc must hand each form once and then stop it with
// ErrWrongKey.
func TestKeyFuncStops(t *testing.T) {
	fn := keyFunc([][]byte{[]byte("one"), []byte("two")})
	for i, want := range []string{"one", "two"} {
		k, err := fn(fsactions.ProtectorInfo{}, i > 0)
		if err != nil {
			t.Fatalf("try %d: %v", i, err)
		}
		if string(k.Data()) != want {
			t.Errorf("try %d: key %q, want %q", i, k.Data(), want)
		}
		_ = k.Wipe()
	}
	if _, err := fn(fsactions.ProtectorInfo{}, true); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("after the last form: %v, want ErrWrongKey", err)
	}
}
