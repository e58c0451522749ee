{{/* Chart name, overridable. */}}
{{- define "delegate-sync.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<release>-<chart>" (just the release when it already contains the chart name). */}}
{{- define "delegate-sync.fullname" -}}
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
{{- define "delegate-sync.clusterScopedName" -}}
{{- printf "%s-%s" .Release.Namespace (include "delegate-sync.fullname" .) }}
{{- end }}

{{- define "delegate-sync.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "delegate-sync.selectorLabels" -}}
app.kubernetes.io/name: {{ include "delegate-sync.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "delegate-sync.labels" -}}
helm.sh/chart: {{ include "delegate-sync.chart" . }}
{{ include "delegate-sync.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: multicluster-delegation
{{- end }}

{{- define "delegate-sync.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "delegate-sync.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "delegate-sync.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "delegate-sync.leaseName" -}}
{{- default (include "delegate-sync.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/* "true" when the source cluster is one of the targets. */}}
{{- define "delegate-sync.selfTarget" -}}
{{- range .Values.targets }}{{ if .self }}true{{ end }}{{ end }}
{{- end }}

{{/* Checks what the schema cannot: target names are unique, at most one is self. */}}
{{- define "delegate-sync.validate" -}}
{{- if not .Values.targets }}
{{- fail "targets: give at least one target ({name, kubeconfigSecret} or {name, self: true})" }}
{{- end }}
{{- $seen := dict }}
{{- $self := 0 }}
{{- range .Values.targets }}
{{- if hasKey $seen .name }}
{{- fail (printf "targets: %q is listed twice" .name) }}
{{- end }}
{{- $_ := set $seen .name true }}
{{- if .self }}{{ $self = add1 $self }}{{ end }}
{{- end }}
{{- if gt $self 1 }}
{{- fail "targets: at most one target can be self" }}
{{- end }}
{{- end }}
