{{/* Chart name, overridable. */}}
{{- define "target.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<release>-<chart>" (just the release when it already contains the chart name). */}}
{{- define "target.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Cluster-scoped objects carry the release namespace: two releases never collide. */}}
{{- define "target.clusterScopedName" -}}
{{- printf "%s-%s" .Release.Namespace (include "target.fullname" .) }}
{{- end }}

{{- define "target.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "target.selectorLabels" -}}
app.kubernetes.io/name: {{ include "target.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "target.labels" -}}
helm.sh/chart: {{ include "target.chart" . }}
{{ include "target.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: multicluster-delegation
{{- end }}

{{- define "target.serviceAccountName" -}}
{{- default (include "target.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{/* With tokenRequest: the ServiceAccount that may only request tokens of the other. */}}
{{- define "target.requesterName" -}}
{{- printf "%s-requester" (include "target.serviceAccountName" .) }}
{{- end }}

{{/* The account whose long-lived token the source's kubeconfig holds. */}}
{{- define "target.tokenAccountName" -}}
{{- if .Values.tokenRequest.enabled }}
{{- include "target.requesterName" . }}
{{- else }}
{{- include "target.serviceAccountName" . }}
{{- end }}
{{- end }}

{{- define "target.tokenSecretName" -}}
{{- default (printf "%s-token" (include "target.tokenAccountName" .)) .Values.tokenSecret.name }}
{{- end }}
