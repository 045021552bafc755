{{/* Chart name, at most 63 characters. */}}
{{- define "ceph-csi-cephfs.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name; the release name alone when it already says the chart. */}}
{{- define "ceph-csi-cephfs.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ceph-csi-cephfs.provisioner.fullname" -}}
{{- printf "%s-%s" (include "ceph-csi-cephfs.fullname" .) .Values.provisioner.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ceph-csi-cephfs.nodeplugin.fullname" -}}
{{- printf "%s-%s" (include "ceph-csi-cephfs.fullname" .) .Values.nodeplugin.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ceph-csi-cephfs.serviceAccountName.provisioner" -}}
{{- default (include "ceph-csi-cephfs.provisioner.fullname" .) .Values.serviceAccounts.provisioner.name -}}
{{- end -}}

{{- define "ceph-csi-cephfs.serviceAccountName.nodeplugin" -}}
{{- default (include "ceph-csi-cephfs.nodeplugin.fullname" .) .Values.serviceAccounts.nodeplugin.name -}}
{{- end -}}

{{/* Labels of every object; pass a dict with "ctx" and "component". */}}
{{- define "ceph-csi-cephfs.labels" -}}
app: {{ include "ceph-csi-cephfs.name" .ctx }}
chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
release: {{ .ctx.Release.Name }}
heritage: {{ .ctx.Release.Service }}
{{- if .component }}
component: {{ .component }}
{{- end }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels that select the pods of a component. */}}
{{- define "ceph-csi-cephfs.selectorLabels" -}}
app: {{ include "ceph-csi-cephfs.name" .ctx }}
component: {{ .component }}
release: {{ .ctx.Release.Name }}
{{- end -}}

{{/* repository:tag of an image block. */}}
{{- define "ceph-csi-cephfs.image" -}}
{{- printf "%s:%s" .repository (toString .tag) -}}
{{- end -}}

{{/* The directory of the driver's socket on the node. */}}
{{- define "ceph-csi-cephfs.socketDir" -}}
{{- printf "%s/plugins/%s" .Values.kubeletDir .Values.driverName -}}
{{- end -}}

{{/*
The driver container's probes, given the liveness sidecar's port: its
/healthz asks the driver's CSI Probe at each request. Readiness gates the
pod's Ready condition; three failed liveness probes in a row restart the
driver container.
*/}}
{{- define "ceph-csi-cephfs.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ . }}
  initialDelaySeconds: 10
  periodSeconds: 20
  timeoutSeconds: 5
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /healthz
    port: {{ . }}
  periodSeconds: 2
  timeoutSeconds: 5
  failureThreshold: 3
{{- end -}}
