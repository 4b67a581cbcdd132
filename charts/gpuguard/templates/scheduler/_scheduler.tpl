{{/* The KubeSchedulerConfiguration (kubescheduler.config.k8s.io/v1) of the secondary scheduler: one profile, named
as the policy's schedulerName, and one extender, the sidecar on localhost. kube-scheduler validates it at start
(weight > 0 with prioritizeVerb, exact extended resource names, no duplicates); so do the chart's tests. */}}
{{- define "gpuguard.schedulerConfiguration" -}}
{{- $values := .Values.scheduler -}}
{{- $extender := $values.extender -}}
{{- $policy := include "gpuguard.policy" . | fromJson -}}
{{- $resources := $extender.managedResources -}}
{{- /* Every MIG resource of gpuguard's catalog (files/mig-catalog.yaml is the package's own catalog file) and of the
policy's migCatalog: kube-scheduler calls the extender only for pods asking for a listed name, and accepts no
wildcards. The device plugin names a profile's resource with `+` turned into `.` (`1g.10gb+me` -> mig-1g.10gb.me). */ -}}
{{- $catalog := .Files.Get "files/mig-catalog.yaml" | fromYaml -}}
{{- $models := concat (get $catalog "models" | default list) (dig "migCatalog" "models" list $policy) -}}
{{- range $models -}}
{{- range (get . "profiles" | default list) -}}
{{- $name := printf "nvidia.com/mig-%s" (replace "+" "." (toString .name)) -}}
{{- if not (has $name $resources) -}}
{{- $resources = append $resources $name -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- /* Time-sliced GPUs are advertised as nvidia.com/gpu.shared when the policy renames them; the extender must
see those pods too. */ -}}
{{- if and (dig "timeSlicing" "renameByDefault" false $policy) (not (has "nvidia.com/gpu.shared" $resources)) -}}
{{- $resources = append $resources "nvidia.com/gpu.shared" -}}
{{- end -}}
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
leaderElection:
  leaderElect: {{ $values.leaderElection.enabled }}
  {{- if $values.leaderElection.enabled }}
  resourceLock: leases
  resourceName: {{ include "gpuguard.componentName" (dict "ctx" . "component" "scheduler") }}
  resourceNamespace: {{ .Release.Namespace }}
  {{- end }}
profiles:
  - schedulerName: {{ $values.schedulerName }}
extenders:
  - urlPrefix: {{ printf "http://127.0.0.1:%d" (int $extender.port) }}
    filterVerb: filter
    prioritizeVerb: prioritize
    # Scores 0..10 count weight x 10 points each, next to the default plugins' (TaintToleration up to 300,
    # NodeAffinity, PodTopologySpread and InterPodAffinity up to 200 each).
    weight: {{ $extender.weight }}
    enableHTTPS: false
    # Node names only; the extender keeps its own watch cache of nodes and pods (no full Node objects per call).
    nodeCacheCapable: true
    ignorable: {{ $extender.ignorable }}
    httpTimeout: {{ $extender.httpTimeout }}
    # Exact names only: kube-scheduler accepts no wildcards, so every MIG resource of the catalog is listed.
    managedResources:
      {{- range $resources }}
      - name: {{ . }}
        ignoredByScheduler: false
      {{- end }}
{{- end -}}
