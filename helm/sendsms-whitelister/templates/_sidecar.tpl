{{/*
=====================================================================================
Named templates to include in your own pod spec. Pass them this chart's context: in a
chart that depends on this one (alias "whitelister"), that is `.Subcharts.whitelister`
(Helm >= 3.7); inside this chart it is `.`.

  spec:
    template:
      metadata:
        annotations:
          {{- include "sendsms-whitelister.podAnnotations" .Subcharts.whitelister | nindent 10 }}
      spec:
        initContainers:
          {{- include "sendsms-whitelister.initContainers" .Subcharts.whitelister | nindent 10 }}
        containers:
          - name: app
            ...
          {{- include "sendsms-whitelister.containers" .Subcharts.whitelister | nindent 10 }}
        volumes:
          {{- include "sendsms-whitelister.volumes" .Subcharts.whitelister | nindent 10 }}

Put the initContainers include first, so that any init container of yours that needs SMS
also runs after the IP is whitelisted.
=====================================================================================
*/}}

{{/*
initContainers entries. sidecar.native=true: the native sidecar running `run`, with
`restartPolicy: Always` and a startupProbe on /readyz that holds back every later init
container and the app containers. sidecar.native=false: an init container running `once`.
*/}}
{{- define "sendsms-whitelister.initContainers" -}}
{{- include "sendsms-whitelister.initContainers.raw" . | trim -}}
{{- end -}}

{{- define "sendsms-whitelister.initContainers.raw" -}}
{{- include "sendsms-whitelister.checkKubeVersion" . -}}
{{- $v := .Values -}}
{{- if $v.sidecar.native }}
- {{ include "sendsms-whitelister.containerBase" (dict "ctx" . "name" $v.sidecar.name "args" (list "run")) | indent 2 | trim }}
  restartPolicy: Always
  {{- include "sendsms-whitelister.statusPort" . | nindent 2 }}
  startupProbe:
    {{- include "sendsms-whitelister.probe" (dict "path" "/readyz" "port" $v.sidecar.port "probe" $v.probes.startup) | nindent 4 }}
  {{- include "sendsms-whitelister.runProbes" . | trim | nindent 2 }}
{{- else }}
- {{ include "sendsms-whitelister.containerBase" (dict "ctx" . "name" (printf "%s-init" $v.sidecar.name) "args" (list "once")) | indent 2 | trim }}
{{- end }}
{{- end -}}

{{/*
containers entries: empty for a native sidecar; with sidecar.native=false, the regular
sidecar container running `run`, whose readiness probe keeps the pod out of Service
endpoints while the egress IP is not whitelisted.
*/}}
{{- define "sendsms-whitelister.containers" -}}
{{- include "sendsms-whitelister.containers.raw" . | trim -}}
{{- end -}}

{{- define "sendsms-whitelister.containers.raw" -}}
{{- $v := .Values -}}
{{- if not $v.sidecar.native }}
- {{ include "sendsms-whitelister.containerBase" (dict "ctx" . "name" $v.sidecar.name "args" (list "run")) | indent 2 | trim }}
  {{- include "sendsms-whitelister.statusPort" . | nindent 2 }}
  {{- include "sendsms-whitelister.runProbes" . | trim | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
volumes entries: the emptyDir holding the state file (unless stateFile.enabled=false) and,
with config.coordination.mode=file, the volume the fleet shares.
*/}}
{{- define "sendsms-whitelister.volumes" -}}
{{- include "sendsms-whitelister.volumes.raw" . | trim -}}
{{- end -}}

{{- define "sendsms-whitelister.volumes.raw" -}}
{{- with .Values.stateFile }}
{{- if .enabled }}
- name: {{ .volumeName }}
  emptyDir:
    sizeLimit: {{ .sizeLimit }}
{{- end }}
{{- end }}
{{- with .Values.config.coordination }}
{{- if eq .mode "file" }}
- name: {{ .file.volumeName }}
  {{- toYaml .file.volume | nindent 2 }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Pod annotations for Prometheus' kubernetes-pods scrape job (metrics.podAnnotations). */}}
{{- define "sendsms-whitelister.podAnnotations" -}}
{{- include "sendsms-whitelister.podAnnotations.raw" . | trim -}}
{{- end -}}

{{- define "sendsms-whitelister.podAnnotations.raw" -}}
{{- if .Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.sidecar.port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}
