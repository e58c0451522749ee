{{/* Chart name, overridable. */}}
{{- define "webhook.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<release>-<chart>" (just the release when it already contains the chart name). */}}
{{- define "webhook.fullname" -}}
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
{{- define "webhook.clusterScopedName" -}}
{{- printf "%s-%s" .Release.Namespace (include "webhook.fullname" .) }}
{{- end }}

{{- define "webhook.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "webhook.selectorLabels" -}}
app.kubernetes.io/name: {{ include "webhook.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "webhook.labels" -}}
helm.sh/chart: {{ include "webhook.chart" . }}
{{ include "webhook.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: multicluster-delegation
{{- end }}

{{- define "webhook.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "webhook.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name of the MutatingWebhookConfiguration. */}}
{{- define "webhook.configurationName" -}}
{{- include "webhook.clusterScopedName" . }}
{{- end }}

{{/* DNS names the API server uses to reach the Service. */}}
{{- define "webhook.dnsNames" -}}
{{- $svc := include "webhook.fullname" . -}}
- {{ printf "%s.%s.svc" $svc .Release.Namespace }}
- {{ printf "%s.%s.svc.cluster.local" $svc .Release.Namespace }}
{{- end }}

{{/* The TLS Secret the webhook serves from. */}}
{{- define "webhook.tlsSecretName" -}}
{{- if eq .Values.certificates.mode "provided" }}
{{- required "certificates.provided.secretName is required with certificates.mode=provided" .Values.certificates.provided.secretName }}
{{- else }}
{{- printf "%s-tls" (include "webhook.fullname" .) }}
{{- end }}
{{- end }}

{{/* The cert-manager Certificate (cert-manager mode). */}}
{{- define "webhook.certificateName" -}}
{{- printf "%s-serving" (include "webhook.fullname" .) }}
{{- end }}

{{- define "webhook.manifestKeySecretName" -}}
{{- default (printf "%s-manifest-key" (include "webhook.fullname" .)) .Values.manifestKey.existingSecret }}
{{- end }}

{{- define "webhook.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "webhook.waiterImage" -}}
{{- default (printf "proxy-waiter:%s" .Chart.AppVersion) .Values.waiter.image }}
{{- end }}

{{- define "webhook.certsImage" -}}
{{- $image := .Values.certificates.certsTool.image }}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) }}
{{- end }}

{{/* Tolerations as --proxy-tolerations reads them: key[=value][:Effect],... */}}
{{- define "webhook.tolerationList" -}}
{{- $items := list }}
{{- range . }}
{{- $item := .key }}
{{- if hasKey . "value" }}{{ $item = printf "%s=%s" $item .value }}{{ end }}
{{- if .effect }}{{ $item = printf "%s:%s" $item .effect }}{{ end }}
{{- $items = append $items $item }}
{{- end }}
{{- join "," $items }}
{{- end }}

{{/* "cpu=1m,memory=8Mi" from a map, the format of --waiter-requests, --waiter-limits and
--proxy-node-selector. */}}
{{- define "webhook.resourceList" -}}
{{- $items := list }}
{{- range $name, $quantity := . }}
{{- $items = append $items (printf "%s=%v" $name $quantity) }}
{{- end }}
{{- join "," $items }}
{{- end }}
