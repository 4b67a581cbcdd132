{{/*
What every gpuguard webhook entry shares. The webhook must never be able to block the cluster (kserve/kserve#480, #688): it
never sees kube-system, its own namespace (so it cannot block its own replacement pods), or a namespace or object
labelled gpuguard.io/webhook=ignore, and only pods that KServe made for an InferenceService.
*/}}

{{/* Namespaces: everything except kube-system, the release namespace, excludeNamespaces and opted-out ones.
kubernetes.io/metadata.name is set on every namespace by the API server itself (1.21+). */}}
{{- define "gpuguard.webhookNamespaceSelector" -}}
namespaceSelector:
  matchExpressions:
    - key: kubernetes.io/metadata.name
      operator: NotIn
      values:
        {{- toYaml (concat (list "kube-system" .Release.Namespace) .Values.webhook.excludeNamespaces | uniq) | nindent 8 }}
    - key: gpuguard.io/webhook
      operator: NotIn
      values: [ignore]
{{- end -}}

{{/* Pods: only those labelled by KServe as part of an InferenceService, minus opted-out ones. */}}
{{- define "gpuguard.webhookPodSelector" -}}
objectSelector:
  matchExpressions:
    - key: serving.kserve.io/inferenceservice
      operator: Exists
    - key: gpuguard.io/webhook
      operator: NotIn
      values: [ignore]
{{- end -}}

{{/* Predictor pods only (or pods without a component label), decided by the API server before it calls us, so
transformer and explainer pods never wait on gpuguard. matchConditions are beta (on by default) from 1.28. */}}
{{- define "gpuguard.webhookPredictorCondition" -}}
{{- if and .Values.webhook.matchConditions (semverCompare ">=1.28-0" .Capabilities.KubeVersion.Version) -}}
matchConditions:
  - name: predictor-pods-only
    expression: >-
      !has(object.metadata.labels) || !('component' in object.metadata.labels) ||
      object.metadata.labels['component'] == 'predictor'
{{- end -}}
{{- end -}}

{{/* The fields every entry sets the same way. */}}
{{- define "gpuguard.webhookCommon" -}}
admissionReviewVersions: [v1, v1beta1]
sideEffects: None
matchPolicy: Equivalent
timeoutSeconds: {{ .Values.webhook.timeoutSeconds }}
{{- end -}}

{{/* clientConfig: the webhook Service at `path`, and in selfManaged mode the caBundle the Secret already holds
(`lookup`, so an upgrade renders the value that is live; empty on first install, when the post-install Job sets
it). In certManager mode cert-manager's cainjector fills caBundle, so the chart never renders one. */}}
{{- define "gpuguard.webhookClientConfig" -}}
{{- $ctx := .ctx -}}
clientConfig:
  service:
    name: {{ include "gpuguard.webhookService" $ctx }}
    namespace: {{ $ctx.Release.Namespace }}
    path: {{ .path }}
    port: 443
  {{- if eq $ctx.Values.certificates.mode "selfManaged" }}
  {{- $secret := lookup "v1" "Secret" $ctx.Release.Namespace (include "gpuguard.webhookTlsSecret" $ctx) }}
  {{- with dig "data" "ca.crt" "" ($secret | default dict) }}
  caBundle: {{ . }}
  {{- end }}
  {{- end }}
{{- end -}}

{{/* Metadata of both configurations; in certManager mode, where cainjector takes the CA from. */}}
{{- define "gpuguard.webhookConfigurationMetadata" -}}
metadata:
  name: {{ include "gpuguard.webhookConfiguration" . }}
  labels:
    {{- include "gpuguard.labels" (dict "ctx" . "component" "webhook") | nindent 4 }}
  {{- if eq .Values.certificates.mode "certManager" }}
  annotations:
    cert-manager.io/inject-ca-from: {{ printf "%s/%s" .Release.Namespace (include "gpuguard.webhookService" .) }}
  {{- end }}
{{- end -}}
