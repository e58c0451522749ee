{{/* Pieces of the certs-tool mode (certs-tool.yaml). */}}

{{/* ServiceAccount, Role (the two Secrets) and ClusterRole (the one webhook configuration) of a certs run. */}}
{{- define "webhook.certsRbac" -}}
{{- $root := .root }}
{{- $tls := include "webhook.tlsSecretName" $root }}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ .name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "webhook.labels" $root | nindent 4 }}
    app.kubernetes.io/component: certs
  {{- with .secretsAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {{ .name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "webhook.labels" $root | nindent 4 }}
    app.kubernetes.io/component: certs
  {{- with .secretsAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
rules:
  - apiGroups: [""]
    resources: ["secrets"]
    resourceNames: [{{ $tls | quote }}, {{ printf "%s-ca" $tls | quote }}]
    verbs: ["get", "create", "patch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ .name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "webhook.labels" $root | nindent 4 }}
    app.kubernetes.io/component: certs
  {{- with .secretsAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ .name }}
subjects:
  - kind: ServiceAccount
    name: {{ .name }}
    namespace: {{ $root.Release.Namespace }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {{ printf "%s-%s" $root.Release.Namespace .name }}
  labels:
    {{- include "webhook.labels" $root | nindent 4 }}
    app.kubernetes.io/component: certs
  {{- with .configurationAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
rules:
  - apiGroups: ["admissionregistration.k8s.io"]
    resources: ["mutatingwebhookconfigurations"]
    resourceNames: [{{ include "webhook.configurationName" $root | quote }}]
    verbs: ["get", "patch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {{ printf "%s-%s" $root.Release.Namespace .name }}
  labels:
    {{- include "webhook.labels" $root | nindent 4 }}
    app.kubernetes.io/component: certs
  {{- with .configurationAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: {{ printf "%s-%s" $root.Release.Namespace .name }}
subjects:
  - kind: ServiceAccount
    name: {{ .name }}
    namespace: {{ $root.Release.Namespace }}
{{- end }}

{{/* Pod spec of a `certs ensure` run; with configuration=true it also patches the caBundle. */}}
{{- define "webhook.certsPodSpec" -}}
{{- $root := .root }}
{{- $values := $root.Values }}
{{- $certs := $values.certificates.certsTool -}}
serviceAccountName: {{ .serviceAccount }}
# certs talks to the API server (in-cluster credentials).
automountServiceAccountToken: true
restartPolicy: Never
{{- with $values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
securityContext:
  {{- toYaml $values.podSecurityContext | nindent 2 }}
{{- with $values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
containers:
  - name: certs
    image: {{ include "webhook.certsImage" $root }}
    imagePullPolicy: {{ $certs.image.pullPolicy }}
    args:
      - ensure
      {{- range (include "webhook.dnsNames" $root | fromYamlArray) }}
      - --name={{ . }}
      {{- end }}
      - --secret={{ $root.Release.Namespace }}/{{ include "webhook.tlsSecretName" $root }}
      - --validity-days={{ $certs.validityDays }}
      - --renew-before-days={{ $certs.renewBeforeDays }}
      {{- if .configuration }}
      - --webhook-configuration={{ include "webhook.configurationName" $root }}
      {{- end }}
    resources:
      {{- toYaml $certs.resources | nindent 6 }}
    securityContext:
      {{- toYaml $values.containerSecurityContext | nindent 6 }}
{{- end }}
