package kms

import (
	"context"
	"crypto/rand"
	"fmt"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipclient"
)

// Options of ceph-csi's KMIP KMS: in the configuration section, and in the
// Kubernetes Secret (in the driver's namespace) that it names.
const (
	kmipEndpoint      = "KMIP_ENDPOINT"
	kmipSecretName    = "KMIP_SECRET_NAME"
	kmipServerName    = "TLS_SERVER_NAME"
	kmipReadTimeout   = "READ_TIMEOUT"
	kmipWriteTimeout  = "WRITE_TIMEOUT"
	kmipUseCryptoRPC  = "USE_CRYPTO_RPC"
	kmipDefaultSecret = "ceph-csi-kmip-credentials"
	kmipCACert        = "CA_CERT"
	kmipClientCert    = "CLIENT_CERT"
	kmipClientKey     = "CLIENT_KEY"
	kmipUniqueID      = "UNIQUE_IDENTIFIER"
	// kmipIVSize is the IV of the server-side AES-CBC encryption.
	kmipIVSize = 16
)

// kmipKMS seals DEKs with an AES key that lives on a KMIP server: by the
// server's Encrypt and Decrypt operations (AES-CBC, PKCS#5 padding, a random
// IV), or, with USE_CRYPTO_RPC false, locally with AES-GCM under the key
// fetched with Get.
type kmipKMS struct {
	id         string
	endpoint   string
	keyID      string
	timeout    time.Duration
	useRPC     bool
	serverName string
	ca         []byte
	cert, key  []byte
}

func newKMIP(ctx context.Context, id string, s map[string]any, env Env) (KMS, error) {
	k := &kmipKMS{id: id}
	var ok bool
	var err error
	if k.endpoint, ok, err = str(s, kmipEndpoint); err != nil || !ok || k.endpoint == "" {
		if err == nil {
			err = fmt.Errorf("%q is required: %w", kmipEndpoint, ErrConfig)
		}
		return nil, fmt.Errorf("KMS %q: %w", id, err)
	}
	secret, _, err := str(s, kmipSecretName)
	if err != nil {
		return nil, fmt.Errorf("KMS %q: %w", id, err)
	}
	if secret == "" {
		secret = kmipDefaultSecret
	}
	if k.serverName, _, err = str(s, kmipServerName); err != nil {
		return nil, fmt.Errorf("KMS %q: %w", id, err)
	}
	read, err := number(s, kmipReadTimeout, 10)
	if err != nil {
		return nil, fmt.Errorf("KMS %q: %w", id, err)
	}
	write, err := number(s, kmipWriteTimeout, 10)
	if err != nil {
		return nil, fmt.Errorf("KMS %q: %w", id, err)
	}
	k.timeout = time.Duration(read+write) * time.Second
	if k.useRPC, err = boolean(s, kmipUseCryptoRPC, true); err != nil {
		return nil, fmt.Errorf("KMS %q: %w", id, err)
	}
	if env.Kube == nil {
		return nil, fmt.Errorf("KMS %q reads its credentials from Secret %q, and there is no Kubernetes API: %w", id, secret, ErrConfig)
	}
	if env.Namespace == "" {
		return nil, fmt.Errorf("KMS %q reads Secret %q in the driver's namespace, and %s is not set: %w", id, secret, podNamespaceEnv, ErrConfig)
	}
	data, err := env.Kube.SecretData(ctx, env.Namespace, secret)
	if err != nil {
		return nil, fmt.Errorf("KMS %q: reading Secret %s/%s: %w", id, env.Namespace, secret, err)
	}
	for _, f := range []struct {
		key string
		to  *[]byte
	}{{kmipCACert, &k.ca}, {kmipClientCert, &k.cert}, {kmipClientKey, &k.key}} {
		if len(data[f.key]) == 0 {
			return nil, fmt.Errorf("KMS %q: Secret %s/%s has no %q: %w", id, env.Namespace, secret, f.key, ErrConfig)
		}
		*f.to = append([]byte(nil), data[f.key]...)
	}
	if k.keyID = string(data[kmipUniqueID]); k.keyID == "" {
		return nil, fmt.Errorf("KMS %q: Secret %s/%s has no %q: %w", id, env.Namespace, secret, kmipUniqueID, ErrConfig)
	}
	return k, nil
}

func (k *kmipKMS) ID() string   { return k.id }
func (k *kmipKMS) Type() string { return TypeKMIP }

// dial connects to the server; the deadline of ctx bounds the whole
// operation.
func (k *kmipKMS) dial(ctx context.Context) (*kmipclient.Client, error) {
	opts := []kmipclient.Option{kmipclient.WithRootCAPem(k.ca), kmipclient.WithClientCertPEM(k.cert, k.key)}
	if k.serverName != "" {
		opts = append(opts, kmipclient.WithServerName(k.serverName))
	}
	c, err := kmipclient.DialContext(ctx, k.endpoint, opts...)
	if err != nil {
		return nil, fmt.Errorf("KMS %q: connecting to the KMIP server %s: %w", k.id, k.endpoint, err)
	}
	return c, nil
}

func (k *kmipKMS) cbc() kmip.CryptographicParameters {
	return kmip.CryptographicParameters{
		CryptographicAlgorithm: kmip.CryptographicAlgorithmAES,
		BlockCipherMode:        kmip.BlockCipherModeCBC,
		PaddingMethod:          kmip.PaddingMethodPKCS5,
	}
}

func (k *kmipKMS) Seal(ctx context.Context, _ string, dek []byte) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, k.timeout)
	defer cancel()
	c, err := k.dial(ctx)
	if err != nil {
		return "", err
	}
	defer c.Close() //nolint:errcheck // the result is already in hand
	if !k.useRPC {
		key, err := k.fetchKey(ctx, c)
		if err != nil {
			return "", err
		}
		defer clear(key)
		a, err := gcm(key)
		if err != nil {
			return "", fmt.Errorf("KMS %q: key %s: %w", k.id, k.keyID, err)
		}
		return sealGCM(a, dek)
	}
	iv := make([]byte, kmipIVSize)
	if _, err := rand.Read(iv); err != nil {
		return "", fmt.Errorf("reading a random IV: %w", err)
	}
	resp, err := c.Encrypt(k.keyID).WithCryptographicParameters(k.cbc()).WithIvCounterNonce(iv).Data(dek).ExecContext(ctx)
	if err != nil {
		return "", fmt.Errorf("KMS %q: KMIP Encrypt with key %s: %w", k.id, k.keyID, err)
	}
	return sealedDEK{DEK: resp.Data, Nonce: iv}.encode()
}

func (k *kmipKMS) Open(ctx context.Context, _ string, sealed string) ([]byte, error) {
	s, err := decodeSealed(sealed)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, k.timeout)
	defer cancel()
	c, err := k.dial(ctx)
	if err != nil {
		return nil, err
	}
	defer c.Close() //nolint:errcheck // the result is already in hand
	if !k.useRPC {
		key, err := k.fetchKey(ctx, c)
		if err != nil {
			return nil, err
		}
		defer clear(key)
		a, err := gcm(key)
		if err != nil {
			return nil, fmt.Errorf("KMS %q: key %s: %w", k.id, k.keyID, err)
		}
		return openGCM(a, s, k.id)
	}
	resp, err := c.Decrypt(k.keyID).WithCryptographicParameters(k.cbc()).WithIvCounterNonce(s.Nonce).Data(s.DEK).ExecContext(ctx)
	if err != nil {
		return nil, fmt.Errorf("KMS %q: KMIP Decrypt with key %s: %w (%w)", k.id, k.keyID, err, ErrWrongKey)
	}
	return resp.Data, nil
}

// fetchKey reads the raw AES key from the server.
func (k *kmipKMS) fetchKey(ctx context.Context, c *kmipclient.Client) ([]byte, error) {
	resp, err := c.Get(k.keyID).ExecContext(ctx)
	if err != nil {
		return nil, fmt.Errorf("KMS %q: KMIP Get of key %s: %w", k.id, k.keyID, err)
	}
	sk, ok := resp.Object.(*kmip.SymmetricKey)
	if !ok {
		return nil, fmt.Errorf("KMS %q: KMIP object %s is a %v, not a symmetric key: %w", k.id, k.keyID, resp.ObjectType, ErrConfig)
	}
	key, err := sk.KeyMaterial()
	if err != nil {
		return nil, fmt.Errorf("KMS %q: key %s: %w", k.id, k.keyID, err)
	}
	return key, nil
}

func (k *kmipKMS) Remove(context.Context, string) error { return nil }
