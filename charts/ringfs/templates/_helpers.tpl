{{- define "ringfs.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ringfs.operatorName" -}}
{{- printf "%s-operator" (include "ringfs.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ringfs.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "ringfs.operatorSelector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "ringfs.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ringfs.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ringfs.image" -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag -}}
{{- end -}}

{{/*
The ringfs node addresses the CSI driver connects to: csi.clusterAddress, else the
client Service of csi.dfsCluster in the release namespace.
*/}}
{{- define "ringfs.csiClusterAddress" -}}
{{- if .Values.csi.clusterAddress -}}
{{- .Values.csi.clusterAddress -}}
{{- else if .Values.csi.dfsCluster -}}
{{- printf "%s.%s.svc.cluster.local:7420" .Values.csi.dfsCluster .Release.Namespace -}}
{{- else -}}
{{- fail "csi.clusterAddress or csi.dfsCluster is required when csi.enabled (the ringfs cluster the driver uses)" -}}
{{- end -}}
{{- end }}

{{/*
The Secrets holding the CSI driver's certificates, or nothing for plaintext. The
controller creates snapshots and (without csi.dfsCluster) volumes: an admin identity. The
node plugin only mounts: a client identity.
*/}}
{{- define "ringfs.csiTlsSecret" -}}
{{- $v := .root.Values.csi -}}
{{- if $v.tls.enabled -}}
{{- $given := index $v.tls (printf "%sSecret" .part) -}}
{{- if $given -}}
{{- $given -}}
{{- else if $v.dfsCluster -}}
{{- printf "%s-%s-tls" $v.dfsCluster .role -}}
{{- else -}}
{{- fail (printf "csi.tls.%sSecret is required when csi.tls.enabled and csi.dfsCluster is empty: a Secret with ca.crt, tls.crt and tls.key of a %s certificate of the cluster's CA (`ringfs certs issue --role %s`); set csi.tls.enabled=false for a cluster without TLS" .part .role .role) -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/*
Container hardening for everything that needs no privilege: no privilege escalation, no
capabilities, a read-only root file system.
*/}}
{{- define "ringfs.restrictedContainer" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: ["ALL"]
{{- end }}
