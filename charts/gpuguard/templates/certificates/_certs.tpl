{{/*
Self-managed certificates: `gpuguard certs ensure` keeps the TLS Secret (CA + serving certificate) and the caBundle
of both webhook configurations in step. It runs
  - before install/upgrade (hook): the Secret must exist before the webhook pods can mount it;
  - after install/upgrade (hook): the configurations exist by then, so their caBundle is set;
  - on a schedule (CronJob): renews the serving certificate from the same CA before it expires, and repairs a
    caBundle someone overwrote (e.g. by re-applying the configurations by hand).
Two identical RBAC sets exist because a pre-install hook runs before any ordinary object is created: the hook set
lives only while hooks run, the other one serves the CronJob.
*/}}

{{/* The certs RBAC objects. Args: (dict "ctx" $ "name" NAME "hook" true|false). Least privilege: create Secrets in
the release namespace (create cannot be limited by name), get/update only the one TLS Secret, get/patch only the
two webhook configurations. */}}
{{- define "gpuguard.certsRbac" -}}
{{- $ctx := .ctx -}}
{{- $labels := include "gpuguard.labels" (dict "ctx" $ctx "component" "certs") -}}
{{- $hook := .hook -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ .name }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    {{- $labels | nindent 4 }}
  {{- with include "gpuguard.certsHookAnnotations" (dict "hook" $hook "weight" "-10") }}{{ . | nindent 2 }}{{ end }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {{ .name }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    {{- $labels | nindent 4 }}
  {{- with include "gpuguard.certsHookAnnotations" (dict "hook" $hook "weight" "-10") }}{{ . | nindent 2 }}{{ end }}
rules:
  - apiGroups: [""]
    resources: [secrets]
    verbs: [create]
  - apiGroups: [""]
    resources: [secrets]
    resourceNames: [{{ include "gpuguard.webhookTlsSecret" $ctx }}]
    verbs: [get, update]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ .name }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    {{- $labels | nindent 4 }}
  {{- with include "gpuguard.certsHookAnnotations" (dict "hook" $hook "weight" "-10") }}{{ . | nindent 2 }}{{ end }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ .name }}
subjects:
  - kind: ServiceAccount
    name: {{ .name }}
    namespace: {{ $ctx.Release.Namespace }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {{ .name }}
  labels:
    {{- $labels | nindent 4 }}
  {{- with include "gpuguard.certsHookAnnotations" (dict "hook" $hook "weight" "-10") }}{{ . | nindent 2 }}{{ end }}
rules:
  - apiGroups: [admissionregistration.k8s.io]
    resources: [mutatingwebhookconfigurations, validatingwebhookconfigurations]
    resourceNames: [{{ include "gpuguard.webhookConfiguration" $ctx }}]
    verbs: [get, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {{ .name }}
  labels:
    {{- $labels | nindent 4 }}
  {{- with include "gpuguard.certsHookAnnotations" (dict "hook" $hook "weight" "-10") }}{{ . | nindent 2 }}{{ end }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: {{ .name }}
subjects:
  - kind: ServiceAccount
    name: {{ .name }}
    namespace: {{ $ctx.Release.Namespace }}
{{- end -}}

{{/* Hook annotations for the hook RBAC set (nothing for the CronJob's set). Deleted once the hooks succeeded, and
before being created again, so an interrupted install leaves nothing that blocks the next one. */}}
{{- define "gpuguard.certsHookAnnotations" -}}
{{- if .hook -}}
annotations:
  helm.sh/hook: pre-install,pre-upgrade,post-install,post-upgrade
  helm.sh/hook-weight: {{ .weight | quote }}
  helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
{{- end -}}
{{- end -}}

{{/* The pod that runs `gpuguard certs ensure`. Args: (dict "ctx" $ "serviceAccount" NAME "extraArgs" LIST). */}}
{{- define "gpuguard.certsPodSpec" -}}
{{- $ctx := .ctx -}}
{{- $values := $ctx.Values.certificates.selfManaged -}}
serviceAccountName: {{ .serviceAccount }}
restartPolicy: Never
{{- with include "gpuguard.imagePullSecrets" $ctx }}{{ . | nindent 0 }}{{ end }}
securityContext:
  {{- include "gpuguard.podSecurityContext" (dict "ctx" $ctx) | nindent 2 }}
{{- with include "gpuguard.placement" $values }}{{ . | nindent 0 }}{{ end }}
containers:
  - name: certs
    image: {{ include "gpuguard.image" $ctx }}
    imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
    command: [gpuguard]
    args:
      {{- include "gpuguard.globalArgs" $ctx | nindent 6 }}
      - certs
      - ensure
      {{- include "gpuguard.certsArgs" $ctx | nindent 6 }}
      {{- range $key, $value := include "gpuguard.selectorLabels" (dict "ctx" $ctx "component" "webhook") | fromYaml }}
      - --secret-label={{ $key }}={{ $value }}
      {{- end }}
      {{- range .extraArgs }}
      - {{ . }}
      {{- end }}
    resources:
      {{- toYaml $values.resources | nindent 6 }}
    securityContext:
      {{- include "gpuguard.securityContext" (dict "ctx" $ctx) | nindent 6 }}
    volumeMounts:
      {{- include "gpuguard.tmpMount" $ctx | nindent 6 }}
volumes:
  {{- include "gpuguard.tmpVolume" $ctx | nindent 2 }}
{{- end -}}
