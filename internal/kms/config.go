package kms

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"strings"
)

// Kube reads the Kubernetes objects some KMS configurations name;
// internal/kube implements it, tests give a fake.
type Kube interface {
	// SecretData returns the data of a Secret.
	SecretData(ctx context.Context, namespace, name string) (map[string][]byte, error)
	// ConfigMapData returns the data of a ConfigMap.
	ConfigMapData(ctx context.Context, namespace, name string) (map[string]string, error)
}

// Env is what a KMS is built with besides its configuration section.
type Env struct {
	// ConfigPath is the KMS configuration file ("" for DefaultConfigPath).
	ConfigPath string
	// Secrets are the request's secrets (provisioner, node-stage or
	// snapshotter): the default and metadata KMSs may read the passphrase
	// from them.
	Secrets map[string]string
	// Tenant is the namespace of the volume's PVC ("" when unknown): the
	// metadata KMS reads its Secret there when the configuration names no
	// namespace.
	Tenant string
	// Kube reaches the Kubernetes API; nil when there is none.
	Kube Kube
	// Namespace is the driver's own namespace (POD_NAMESPACE), where the
	// KMIP credentials live and, without a configuration file, the
	// csi-kms-connection-details ConfigMap.
	Namespace string
}

// Names ceph-csi reads.
const (
	typeKey           = "encryptionKMSType"
	providerKey       = "KMS_PROVIDER"
	configMapEnv      = "KMS_CONFIGMAP_NAME"
	defaultConfigMap  = "csi-kms-connection-details"
	podNamespaceEnv   = "POD_NAMESPACE"
	secretNameKey     = "secretName"
	secretNamespaceKy = "secretNamespace"
)

// notServed are the KMS types ceph-csi knows and this driver does not
// serve, with what they are.
var notServed = map[string]string{
	"vault":            "HashiCorp Vault",
	"vaulttokens":      "HashiCorp Vault with per-tenant tokens",
	"vaulttenantsa":    "HashiCorp Vault with per-tenant service accounts",
	"ibmkeyprotect":    "IBM Key Protect",
	"kp-metadata":      "IBM Key Protect",
	"aws-metadata":     "AWS KMS",
	"aws-sts-metadata": "AWS KMS through STS",
	"azure-kv":         "Azure Key Vault",
}

// PodNamespace is the driver's namespace from the environment Rook and the
// operator set.
func PodNamespace() string { return os.Getenv(podNamespaceEnv) }

// Get returns the KMS of kmsID; "" and "default" are the default KMS. An
// unknown ID or an unusable configuration is ErrConfig, a type not served
// ErrUnsupported.
func Get(ctx context.Context, kmsID string, env Env) (KMS, error) {
	if kmsID == "" || kmsID == TypeDefault {
		return newDefault(env.Secrets)
	}
	section, err := section(ctx, kmsID, env)
	if err != nil {
		return nil, err
	}
	typ, err := sectionType(section)
	if err != nil {
		return nil, fmt.Errorf("KMS %q: %w", kmsID, err)
	}
	switch typ {
	case TypeMetadata:
		return newMetadata(ctx, kmsID, section, env)
	case TypeKMIP:
		return newKMIP(ctx, kmsID, section, env)
	case TypeDefault:
		return newDefault(env.Secrets)
	}
	if what, ok := notServed[typ]; ok {
		return nil, fmt.Errorf("KMS %q is of type %q (%s): %w by this driver (served: %s, %s and the default)",
			kmsID, typ, what, ErrUnsupported, TypeMetadata, TypeKMIP)
	}
	return nil, fmt.Errorf("KMS %q has the unknown type %q: %w", kmsID, typ, ErrUnsupported)
}

// Type returns the type of the KMS kmsID from the configuration, without
// building it.
func Type(ctx context.Context, kmsID string, env Env) (string, error) {
	if kmsID == "" || kmsID == TypeDefault {
		return TypeDefault, nil
	}
	s, err := section(ctx, kmsID, env)
	if err != nil {
		return "", err
	}
	return sectionType(s)
}

func newDefault(secrets map[string]string) (KMS, error) {
	p, ok := secrets[PassphraseKey]
	if !ok || p == "" {
		return nil, fmt.Errorf("the default KMS takes the passphrase from the secrets' %q, which they lack: %w", PassphraseKey, ErrConfig)
	}
	return &defaultKMS{passphrase: []byte(p)}, nil
}

// section reads the configuration of kmsID: from the file, or, when there
// is none, from the csi-kms-connection-details ConfigMap (as ceph-csi).
func section(ctx context.Context, kmsID string, env Env) (map[string]any, error) {
	path := env.ConfigPath
	if path == "" {
		path = DefaultConfigPath
	}
	all := map[string]any{}
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := json.Unmarshal(data, &all); err != nil {
			return nil, fmt.Errorf("parsing the KMS configuration %s: %w: %w", path, err, ErrConfig)
		}
	case errors.Is(err, fs.ErrNotExist):
		if all, err = configMapSections(ctx, env); err != nil {
			return nil, fmt.Errorf("no KMS configuration file %s, and %w", path, err)
		}
	default:
		return nil, fmt.Errorf("reading the KMS configuration %s: %w", path, err)
	}
	raw, ok := all[kmsID]
	if !ok {
		ids := make([]string, 0, len(all))
		for id := range all {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		return nil, fmt.Errorf("no KMS %q in the KMS configuration (it has %s): %w", kmsID, strings.Join(ids, ", "), ErrConfig)
	}
	s, ok := raw.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("KMS %q: its configuration is not a JSON object: %w", kmsID, ErrConfig)
	}
	return s, nil
}

func configMapSections(ctx context.Context, env Env) (map[string]any, error) {
	if env.Kube == nil {
		return nil, fmt.Errorf("no Kubernetes API to read the ConfigMap from: %w", ErrConfig)
	}
	if env.Namespace == "" {
		return nil, fmt.Errorf("%s is not set, so the ConfigMap %s cannot be found: %w", podNamespaceEnv, defaultConfigMap, ErrConfig)
	}
	name := os.Getenv(configMapEnv)
	if name == "" {
		name = defaultConfigMap
	}
	data, err := env.Kube.ConfigMapData(ctx, env.Namespace, name)
	if err != nil {
		return nil, fmt.Errorf("reading ConfigMap %s/%s: %w", env.Namespace, name, err)
	}
	all := make(map[string]any, len(data))
	for id, js := range data {
		s := map[string]any{}
		if err := json.Unmarshal([]byte(js), &s); err != nil {
			return nil, fmt.Errorf("ConfigMap %s/%s key %q is not a JSON object: %w: %w", env.Namespace, name, id, err, ErrConfig)
		}
		all[id] = s
	}
	return all, nil
}

func sectionType(s map[string]any) (string, error) {
	for _, k := range []string{typeKey, providerKey} {
		if v, ok := s[k]; ok {
			str, ok := v.(string)
			if !ok {
				return "", fmt.Errorf("%q is not a string: %w", k, ErrConfig)
			}
			return str, nil
		}
	}
	return "", fmt.Errorf("neither %q nor %q names the KMS type: %w", typeKey, providerKey, ErrConfig)
}

// str reads an optional string option; present but not a string is an
// error.
func str(s map[string]any, key string) (string, bool, error) {
	v, ok := s[key]
	if !ok {
		return "", false, nil
	}
	out, ok := v.(string)
	if !ok {
		return "", true, fmt.Errorf("option %q is not a string: %w", key, ErrConfig)
	}
	return out, true, nil
}

// number reads an optional number option (JSON number or numeric string).
func number(s map[string]any, key string, def int) (int, error) {
	switch v := s[key].(type) {
	case nil:
		return def, nil
	case float64:
		return int(v), nil
	case string:
		n, err := strconv.Atoi(v)
		if err != nil {
			return 0, fmt.Errorf("option %q: %q is not a number: %w", key, v, ErrConfig)
		}
		return n, nil
	default:
		return 0, fmt.Errorf("option %q is not a number: %w", key, ErrConfig)
	}
}

// boolean reads an optional boolean option (JSON bool or "true"/"false").
func boolean(s map[string]any, key string, def bool) (bool, error) {
	switch v := s[key].(type) {
	case nil:
		return def, nil
	case bool:
		return v, nil
	case string:
		b, err := strconv.ParseBool(v)
		if err != nil {
			return false, fmt.Errorf("option %q: %q is not a boolean: %w", key, v, ErrConfig)
		}
		return b, nil
	default:
		return false, fmt.Errorf("option %q is not a boolean: %w", key, ErrConfig)
	}
}
