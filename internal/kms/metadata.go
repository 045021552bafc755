package kms

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/json"
	"fmt"

	"golang.org/x/crypto/scrypt"
)

// sealedDEK is the JSON form of a sealed DEK in the image metadata
// (rbd.csi.ceph.com/dek), as ceph-csi writes it: the ciphertext and the
// nonce (or IV), each base64 as encoding/json writes byte slices.
type sealedDEK struct {
	DEK   []byte `json:"dek"`
	Nonce []byte `json:"nonce"`
}

func (s sealedDEK) encode() (string, error) {
	b, err := json.Marshal(s)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

func decodeSealed(v string) (sealedDEK, error) {
	var s sealedDEK
	if err := json.Unmarshal([]byte(v), &s); err != nil {
		return s, fmt.Errorf("the sealed DEK is not the JSON ceph-csi writes: %w: %w", err, ErrConfig)
	}
	if len(s.DEK) == 0 || len(s.Nonce) == 0 {
		return s, fmt.Errorf("the sealed DEK lacks its ciphertext or nonce: %w", ErrConfig)
	}
	return s, nil
}

// scrypt parameters of ceph-csi's secrets-metadata KMS: N=32768, r=8, p=1,
// a 32-byte (AES-256) key; the salt is the volume ID.
const (
	scryptN      = 32768
	scryptR      = 8
	scryptP      = 1
	scryptKeyLen = 32
)

// metadataKMS is ceph-csi's secrets-metadata KMS.
type metadataKMS struct {
	id         string
	passphrase []byte
}

func newMetadata(ctx context.Context, id string, s map[string]any, env Env) (KMS, error) {
	name, named, err := str(s, secretNameKey)
	if err != nil {
		return nil, fmt.Errorf("KMS %q: %w", id, err)
	}
	if !named {
		p, ok := env.Secrets[PassphraseKey]
		if !ok || p == "" {
			return nil, fmt.Errorf("KMS %q (%s) names no %q, so the passphrase is the secrets' %q, which they lack: %w",
				id, TypeMetadata, secretNameKey, PassphraseKey, ErrConfig)
		}
		return &metadataKMS{id: id, passphrase: []byte(p)}, nil
	}
	ns, _, err := str(s, secretNamespaceKy)
	if err != nil {
		return nil, fmt.Errorf("KMS %q: %w", id, err)
	}
	if ns == "" {
		ns = env.Tenant
	}
	if ns == "" {
		return nil, fmt.Errorf("KMS %q names Secret %q without %q, and the volume's PVC namespace is not known: %w",
			id, name, secretNamespaceKy, ErrConfig)
	}
	if env.Kube == nil {
		return nil, fmt.Errorf("KMS %q reads Secret %s/%s, and there is no Kubernetes API: %w", id, ns, name, ErrConfig)
	}
	data, err := env.Kube.SecretData(ctx, ns, name)
	if err != nil {
		return nil, fmt.Errorf("KMS %q: reading Secret %s/%s: %w", id, ns, name, err)
	}
	p := data[PassphraseKey]
	if len(p) == 0 {
		return nil, fmt.Errorf("KMS %q: Secret %s/%s has no %q: %w", id, ns, name, PassphraseKey, ErrConfig)
	}
	return &metadataKMS{id: id, passphrase: append([]byte(nil), p...)}, nil
}

func (k *metadataKMS) ID() string   { return k.id }
func (k *metadataKMS) Type() string { return TypeMetadata }

// aead derives the volume's key from the passphrase.
func (k *metadataKMS) aead(volumeID string) (cipher.AEAD, error) {
	key, err := scrypt.Key(k.passphrase, []byte(volumeID), scryptN, scryptR, scryptP, scryptKeyLen)
	if err != nil {
		return nil, fmt.Errorf("deriving the key of volume %s: %w", volumeID, err)
	}
	defer clear(key)
	return gcm(key)
}

func gcm(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func (k *metadataKMS) Seal(_ context.Context, volumeID string, dek []byte) (string, error) {
	a, err := k.aead(volumeID)
	if err != nil {
		return "", err
	}
	return sealGCM(a, dek)
}

func sealGCM(a cipher.AEAD, dek []byte) (string, error) {
	s := sealedDEK{Nonce: make([]byte, a.NonceSize())}
	if _, err := rand.Read(s.Nonce); err != nil {
		return "", fmt.Errorf("reading a random nonce: %w", err)
	}
	s.DEK = a.Seal(nil, s.Nonce, dek, nil)
	return s.encode()
}

func (k *metadataKMS) Open(_ context.Context, volumeID, sealed string) ([]byte, error) {
	s, err := decodeSealed(sealed)
	if err != nil {
		return nil, err
	}
	a, err := k.aead(volumeID)
	if err != nil {
		return nil, err
	}
	return openGCM(a, s, k.id)
}

func openGCM(a cipher.AEAD, s sealedDEK, id string) ([]byte, error) {
	if len(s.Nonce) != a.NonceSize() {
		return nil, fmt.Errorf("KMS %q: the sealed DEK's nonce has %d bytes, not %d: %w", id, len(s.Nonce), a.NonceSize(), ErrConfig)
	}
	dek, err := a.Open(nil, s.Nonce, s.DEK, nil)
	if err != nil {
		return nil, fmt.Errorf("KMS %q: %w (a different passphrase, or a DEK sealed for another volume ID)", id, ErrWrongKey)
	}
	return dek, nil
}

func (k *metadataKMS) Remove(context.Context, string) error { return nil }
