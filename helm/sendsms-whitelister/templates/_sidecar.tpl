{{/*
=====================================================================================
Named templates to include in your own pod spec. Pass them this chart's context: in a
chart that depends on this one (alias "whitelister"), that is `.Subcharts.whitelister`
(Helm >= 3.7); inside this chart it is `.`.

  spec:
    template:
      metadata:
        annotations:
          {{- include "sendsms-whitelister.podAnnotations" (dict "chart" .Subcharts.whitelister "annotations" .Values.podAnnotations) | nindent 10 }}
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
also runs after the IP is whitelisted. Pass your pod's own annotations to podAnnotations
(or pass the chart context alone when there are none): it returns them with the sidecar's
added, and never overrides one of yours.
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
{{- include "sendsms-whitelister.checkStartupBudget" . }}
- {{ include "sendsms-whitelister.containerBase" (dict "ctx" . "name" $v.sidecar.name "args" (list "run") "gateway" true) | indent 2 | trim }}
  restartPolicy: Always
  {{- include "sendsms-whitelister.ports" (dict "ctx" . "gateway" true) | nindent 2 }}
  startupProbe:
    {{- include "sendsms-whitelister.probe" (dict "path" "/readyz" "port" $v.sidecar.port "probe" $v.probes.startup) | nindent 4 }}
  {{- include "sendsms-whitelister.runProbes" . | trim | nindent 2 }}
{{- else }}
- {{ include "sendsms-whitelister.containerBase" (dict "ctx" . "name" (printf "%s-init" $v.sidecar.name) "args" (list "once") "gateway" false) | indent 2 | trim }}
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
- {{ include "sendsms-whitelister.containerBase" (dict "ctx" . "name" $v.sidecar.name "args" (list "run") "gateway" true) | indent 2 | trim }}
  {{- include "sendsms-whitelister.ports" (dict "ctx" . "gateway" true) | nindent 2 }}
  {{- include "sendsms-whitelister.runProbes" . | trim | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
volumes entries: the emptyDir holding the state file (unless stateFile.enabled=false), the
gateway token's Secret (gateway on, gateway.tokenSecret set), the notification and
heartbeat Secrets, the extra CA ConfigMap and, with config.coordination.mode=file, the
volume the fleet shares.
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
{{- if and (include "sendsms-whitelister.gatewayOn" .) .Values.gateway.tokenSecret }}
- name: sendsms-gateway-token
  secret:
    secretName: {{ .Values.gateway.tokenSecret }}
    items:
      - key: token
        path: token
{{- end }}
{{- with .Values.notifications.urlsSecret }}
- name: sendsms-notify
  secret:
    secretName: {{ . }}
    items:
      - key: urls
        path: urls
{{- end }}
{{- with .Values.notifications.heartbeatSecret }}
- name: sendsms-heartbeat
  secret:
    secretName: {{ . }}
    items:
      - key: url
        path: url
{{- end }}
{{- with .Values.extraCA.configMap }}
- name: sendsms-extra-ca
  configMap:
    name: {{ . }}
    items:
      - key: {{ $.Values.extraCA.key }}
        path: {{ $.Values.extraCA.key }}
{{- end }}
{{- with .Values.config.coordination }}
{{- if eq .mode "file" }}
- name: {{ .file.volumeName }}
  {{- toYaml .file.volume | nindent 2 }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
Pod annotations: prometheus.io/scrape, /port and /path for Prometheus' kubernetes-pods scrape
job (metrics.podAnnotations), merged with the pod's own. Called with the chart context alone,
or with (dict "chart" CONTEXT "annotations" YOUR_ANNOTATIONS): the result holds every one of
yours unchanged, and the sidecar's prometheus.io/* only when you have no prometheus.io/*
annotation at all (a pod has one scrape port and path: yours stay, and the sidecar is then
scraped through the ServiceMonitor).
*/}}
{{- define "sendsms-whitelister.podAnnotations" -}}
{{- $ctx := . -}}
{{- $own := dict -}}
{{- if not (hasKey . "Values") -}}
{{- $ctx = required "sendsms-whitelister.podAnnotations: pass the chart context, or (dict \"chart\" CONTEXT \"annotations\" MAP)" .chart -}}
{{- $own = .annotations | default dict -}}
{{- end -}}
{{- $merged := deepCopy $own -}}
{{- $theirs := false -}}
{{- range $k, $_ := $own }}{{ if hasPrefix "prometheus.io/" $k }}{{ $theirs = true }}{{ end }}{{ end -}}
{{- if and $ctx.Values.metrics.podAnnotations (not $theirs) -}}
{{- $_ := set $merged "prometheus.io/scrape" "true" -}}
{{- $_ := set $merged "prometheus.io/port" ($ctx.Values.sidecar.port | toString) -}}
{{- $_ := set $merged "prometheus.io/path" "/metrics" -}}
{{- end -}}
{{- if $merged }}{{ toYaml $merged }}{{ end -}}
{{- end -}}
