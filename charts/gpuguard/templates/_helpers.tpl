{{/*
Names, labels and shared fragments. Helpers that need a component take a dict:
  (dict "ctx" $ "component" "webhook")
and fail with a message when called without one, so a template mistake cannot render unlabelled objects.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "gpuguard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The object name prefix: fullnameOverride, else "<release>-<name>" unless the release name already contains it.
Truncated to 63 characters (the DNS label limit of Service names). */}}
{{- define "gpuguard.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "gpuguard.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "gpuguard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The name of one component's objects: "<fullname>-<component>", at most 63 characters. */}}
{{- define "gpuguard.componentName" -}}
{{- if not .component -}}{{- fail "gpuguard.componentName needs (dict \"ctx\" $ \"component\" NAME)" -}}{{- end -}}
{{- printf "%s-%s" (include "gpuguard.fullname" .ctx | trunc (int (sub 62 (len .component)))) .component | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: only the immutable name, instance and component (a Deployment's selector cannot change). */}}
{{- define "gpuguard.selectorLabels" -}}
{{- if not .component -}}{{- fail "gpuguard.selectorLabels needs (dict \"ctx\" $ \"component\" NAME)" -}}{{- end -}}
app.kubernetes.io/name: {{ include "gpuguard.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Every object's labels: the selector labels plus version, manager, chart, part-of and commonLabels. */}}
{{- define "gpuguard.labels" -}}
{{ include "gpuguard.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: gpuguard
helm.sh/chart: {{ include "gpuguard.chart" .ctx }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* An image reference from (dict "ctx" $ "image" VALUES "defaultTag" TAG): REGISTRY/REPOSITORY then :TAG,
@DIGEST, or :TAG@DIGEST. global.imageRegistry replaces the image's own registry. The tag falls back to defaultTag
only when there is no digest: a digest alone pins the image (templates/validation.yaml checks the parts). */}}
{{- define "gpuguard.imageRef" -}}
{{- $image := .image -}}
{{- $registry := default $image.registry .ctx.Values.global.imageRegistry -}}
{{- $ref := ternary (printf "%s/%s" $registry $image.repository) $image.repository (ne $registry "") -}}
{{- $tag := $image.tag | default (ternary "" .defaultTag (ne (toString $image.digest) "")) -}}
{{- with $tag }}{{ $ref = printf "%s:%s" $ref . }}{{ end -}}
{{- with $image.digest }}{{ $ref = printf "%s@%s" $ref . }}{{ end -}}
{{- $ref -}}
{{- end -}}

{{/* The gpuguard image, tag defaulting to the chart's appVersion. */}}
{{- define "gpuguard.image" -}}
{{- include "gpuguard.imageRef" (dict "ctx" . "image" .Values.image "defaultTag" .Chart.AppVersion) -}}
{{- end -}}

{{/* The upstream kube-scheduler image. Without a tag or digest: the cluster's own version (major.minor.patch, any
distro suffix such as "-eks-1a2b3c" dropped), because kube-scheduler must not be newer than the API server. */}}
{{- define "gpuguard.schedulerImage" -}}
{{- $version := semver .Capabilities.KubeVersion.Version -}}
{{- $clusterTag := printf "v%d.%d.%d" $version.Major $version.Minor $version.Patch -}}
{{- include "gpuguard.imageRef" (dict "ctx" . "image" .Values.scheduler.image "defaultTag" $clusterTag) -}}
{{- end -}}

{{/* Failures for one image's values, as a message ("" when they are fine). Args: (dict "at" "image" "image" VALUES).
Docker's reference grammar: a tag is [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}; a repository is lower-case path components;
a registry is a host (dots, optional :port) and optional path. */}}
{{- define "gpuguard.imageProblem" -}}
{{- $at := .at -}}
{{- $image := .image -}}
{{- $tag := toString $image.tag -}}
{{- $digest := toString $image.digest -}}
{{- if regexMatch "^sha256:|@" $tag -}}
{{ $at }}.tag {{ $tag | quote }} is a digest, not a tag.
  Give it as {{ $at }}.digest ({{ $at }}.digest={{ regexReplaceAll "^.*@" $tag "" }}) and leave {{ $at }}.tag empty; the image is then
  rendered as REPOSITORY@DIGEST.
{{- else if and $tag (not (regexMatch "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$" $tag)) -}}
{{ $at }}.tag {{ $tag | quote }} is not an image tag: up to 128 letters, digits, _ . and -, not starting with . or -.
{{- else if and $digest (not (regexMatch "^sha256:[a-f0-9]{64}$" $digest)) -}}
{{ $at }}.digest {{ $digest | quote }} is not an image digest: it must be "sha256:" and 64 lower-case hex digits,
  as `docker buildx imagetools inspect IMAGE` or `crane digest IMAGE` print it.
{{- else if regexMatch "[:@]" (toString $image.repository) -}}
{{ $at }}.repository {{ $image.repository | quote }} carries a tag, digest or port: give the registry host in
  {{ $at }}.registry (or global.imageRegistry), the tag in {{ $at }}.tag and the digest in {{ $at }}.digest.
{{- else if not (regexMatch "^[a-z0-9]+([._-]+[a-z0-9]+)*(/[a-z0-9]+([._-]+[a-z0-9]+)*)*$" (toString $image.repository)) -}}
{{ $at }}.repository {{ $image.repository | quote }} is not a repository path: lower-case letters, digits and . _ - in
  /-separated parts.
{{- else if and $image.registry (regexMatch "^[^/]*[.:]" (toString $image.repository)) (regexMatch "^[^/]+/" (toString $image.repository)) -}}
{{ $at }}.repository {{ $image.repository | quote }} starts with a registry host, and {{ $at }}.registry is {{ $image.registry | quote }}:
  the image would be {{ $image.registry }}/{{ $image.repository }}. Give the host in {{ $at }}.registry only.
{{- end -}}
{{- end -}}

{{/* The policy as a dict (for the checks in validation.yaml and what other objects derive from it). */}}
{{- define "gpuguard.policy" -}}
{{- toJson (fromYaml .Values.policy) -}}
{{- end -}}

{{/* "namespace/name" of the NVIDIA device plugin ConfigMap the agent writes time-slicing configs into; the policy's
timeSlicing.configMap, with the model's defaults. */}}
{{- define "gpuguard.timeSlicingConfigMap" -}}
{{- $policy := include "gpuguard.policy" . | fromJson -}}
{{- $ref := dig "timeSlicing" "configMap" dict $policy -}}
{{- printf "%s/%s" (default "gpu-operator" $ref.namespace) (default "gpuguard-time-slicing" $ref.name) -}}
{{- end -}}

{{/* The Secret holding the webhook's serving certificate (tls.crt, tls.key, ca.crt), in either certificate mode. */}}
{{- define "gpuguard.webhookTlsSecret" -}}
{{- printf "%s-tls" (include "gpuguard.componentName" (dict "ctx" . "component" "webhook")) -}}
{{- end -}}

{{/* The Service the API server calls; the serving certificate carries its DNS names. */}}
{{- define "gpuguard.webhookService" -}}
{{- include "gpuguard.componentName" (dict "ctx" . "component" "webhook") -}}
{{- end -}}

{{/* Both webhook configurations (Mutating and Validating) share this name. */}}
{{- define "gpuguard.webhookConfiguration" -}}
{{- include "gpuguard.componentName" (dict "ctx" . "component" "webhook") -}}
{{- end -}}

{{/* The policy volume: the whole ConfigMap as a directory. Never a subPath mount, which kubelet does not update,
so an edited policy reaches the running services (they re-read the file) without a restart. */}}
{{- define "gpuguard.policyVolume" -}}
- name: policy
  configMap:
    name: {{ include "gpuguard.componentName" (dict "ctx" . "component" "policy") }}
{{- end -}}

{{- define "gpuguard.policyMount" -}}
- name: policy
  mountPath: /etc/gpuguard
  readOnly: true
{{- end -}}

{{/* A writable /tmp on a read-only root filesystem (Python's tempfile, certificate work files). */}}
{{- define "gpuguard.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 16Mi
{{- end -}}

{{- define "gpuguard.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* The security context of every gpuguard container: securityContext merged with a component's override. */}}
{{- define "gpuguard.securityContext" -}}
{{- toYaml (merge (deepCopy (default dict .override)) (deepCopy .ctx.Values.securityContext)) -}}
{{- end -}}

{{- define "gpuguard.podSecurityContext" -}}
{{- toYaml (merge (deepCopy (default dict .override)) (deepCopy .ctx.Values.podSecurityContext)) -}}
{{- end -}}

{{/* The global flags in front of every gpuguard subcommand. */}}
{{- define "gpuguard.globalArgs" -}}
- --log-level={{ .Values.logLevel }}
{{- end -}}

{{/* `gpuguard certs` arguments naming the webhook Secret, Service and configurations. */}}
{{- define "gpuguard.certsArgs" -}}
- --in-cluster
- --namespace={{ .Release.Namespace }}
- --secret={{ include "gpuguard.webhookTlsSecret" . }}
- --service-name={{ include "gpuguard.webhookService" . }}
- --mutating-webhook-configuration={{ include "gpuguard.webhookConfiguration" . }}
- --validating-webhook-configuration={{ include "gpuguard.webhookConfiguration" . }}
{{- end -}}

{{/* Image pull secrets, when any. */}}
{{- define "gpuguard.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets -}}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end -}}
{{- end -}}

{{/* A prometheus-operator ServiceMonitor for one component's "metrics" Service port.
Args: (dict "ctx" $ "component" NAME). */}}
{{- define "gpuguard.serviceMonitor" -}}
{{- $monitor := .ctx.Values.metrics.serviceMonitor -}}
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ include "gpuguard.componentName" . }}
  namespace: {{ .ctx.Release.Namespace }}
  labels:
    {{- include "gpuguard.labels" . | nindent 4 }}
    {{- with $monitor.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "gpuguard.selectorLabels" . | nindent 6 }}
  namespaceSelector:
    matchNames: [{{ .ctx.Release.Namespace }}]
  endpoints:
    - port: metrics
      path: /metrics
      interval: {{ $monitor.interval }}
      scrapeTimeout: {{ $monitor.scrapeTimeout }}
{{- end -}}

{{/* topologySpreadConstraints of a Deployment's pods; an entry without labelSelector gets the component's selector
labels, so admins can write only what differs (maxSkew, topologyKey, whenUnsatisfiable). Args: (dict "ctx" $
"component" NAME "constraints" LIST). */}}
{{- define "gpuguard.topologySpread" -}}
{{- $selector := include "gpuguard.selectorLabels" (dict "ctx" .ctx "component" .component) | fromYaml -}}
{{- $constraints := list -}}
{{- range .constraints -}}
{{- $constraint := deepCopy . -}}
{{- if not (hasKey $constraint "labelSelector") -}}
{{- $_ := set $constraint "labelSelector" (dict "matchLabels" $selector) -}}
{{- end -}}
{{- $constraints = append $constraints $constraint -}}
{{- end -}}
{{- with $constraints -}}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end -}}
{{- end -}}

{{/* A component's ServiceAccount metadata annotations, when any. Args: the component's values. */}}
{{- define "gpuguard.serviceAccountAnnotations" -}}
{{- with (dig "serviceAccount" "annotations" dict .) -}}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end -}}
{{- end -}}

{{/* nodeSelector and tolerations of a short-lived pod (hook Job, test pod). Args: its values. */}}
{{- define "gpuguard.placement" -}}
{{- $placement := dict -}}
{{- with .nodeSelector }}{{ $_ := set $placement "nodeSelector" . }}{{ end -}}
{{- with .tolerations }}{{ $_ := set $placement "tolerations" . }}{{ end -}}
{{- with $placement }}{{ toYaml . }}{{ end -}}
{{- end -}}
