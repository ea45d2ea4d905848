{{/* Chart-internal helpers. The templates meant for your own pod spec are in _sidecar.tpl. */}}

{{- define "sendsms-whitelister.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sendsms-whitelister.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "sendsms-whitelister.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sendsms-whitelister.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sendsms-whitelister.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sendsms-whitelister.labels" -}}
helm.sh/chart: {{ include "sendsms-whitelister.chart" . }}
{{ include "sendsms-whitelister.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Pod labels of the example workload; also the default metrics Service selector. */}}
{{- define "sendsms-whitelister.exampleSelectorLabels" -}}
{{ include "sendsms-whitelister.selectorLabels" . }}
app.kubernetes.io/component: example
{{- end -}}

{{- define "sendsms-whitelister.image" -}}
{{- $repo := .Values.image.repository -}}
{{- with .Values.image.registry }}{{ $repo = printf "%s/%s" (trimSuffix "/" .) $repo }}{{ end -}}
{{- $ref := printf "%s:%s" $repo (.Values.image.tag | default .Chart.AppVersion | toString) -}}
{{- with .Values.image.digest }}{{ $ref = printf "%s@%s" $ref . }}{{ end -}}
{{- $ref -}}
{{- end -}}

{{/*
Native sidecars are GA in 1.33 and on by default since 1.29. An older kubelet or API server
drops `restartPolicy` from the init container; `run` then never exits and the pod hangs in
Init. Refuse to render that instead.
*/}}
{{- define "sendsms-whitelister.checkKubeVersion" -}}
{{- if and .Values.sidecar.native (semverCompare "<1.29.0-0" .Capabilities.KubeVersion.Version) -}}
{{- fail (printf "sendsms-whitelister: sidecar.native=true needs native sidecars (Kubernetes >= 1.29) but the target is %s: there restartPolicy would be dropped and the pod would hang in Init. Set sidecar.native=false." .Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- end -}}

{{/*
Fleet coordination rules the schema cannot state clearly. The messages never repeat a Redis
URL: it may hold a password. Called from templates/validate.yaml, so they hold even when no
pod is rendered, and from the env template.
*/}}
{{- define "sendsms-whitelister.checkCoordination" -}}
{{- $co := .Values.config.coordination -}}
{{- if eq $co.mode "redis" -}}
{{- $url := $co.redis.url -}}
{{- $secret := $co.redis.existingSecret.name -}}
{{- if and (not $url) (not $secret) -}}
{{- fail "sendsms-whitelister: config.coordination.mode=redis needs config.coordination.redis.url (redis://HOST:PORT/DB, no password) or config.coordination.redis.existingSecret.name (a Secret whose key config.coordination.redis.existingSecret.key holds the URL)" -}}
{{- end -}}
{{- if and $url $secret -}}
{{- fail "sendsms-whitelister: set only one of config.coordination.redis.url and config.coordination.redis.existingSecret.name" -}}
{{- end -}}
{{- end -}}
{{- if contains "@" $co.redis.url -}}
{{- fail "sendsms-whitelister: config.coordination.redis.url holds credentials (user@ or :password@), and values are not secret. Put the whole URL in a Secret and set config.coordination.redis.existingSecret.name and .key instead (the URL is not repeated here)" -}}
{{- end -}}
{{- if eq $co.mode "file" -}}
{{- if not $co.file.volume -}}
{{- fail "sendsms-whitelister: config.coordination.mode=file needs config.coordination.file.volume, a volume every pod of the fleet mounts (e.g. persistentVolumeClaim: {claimName: NAME} on a ReadWriteMany, flock-capable file system). Without one each pod would coordinate only with itself; mode=redis is usually simpler in Kubernetes" -}}
{{- end -}}
{{- if hasKey $co.file.volume "emptyDir" -}}
{{- fail "sendsms-whitelister: config.coordination.file.volume is an emptyDir, which belongs to one pod: no other member would see it. Use a volume the whole fleet shares, or mode=redis" -}}
{{- end -}}
{{- if and .Values.stateFile.enabled (eq (trimSuffix "/" $co.file.dir) (trimSuffix "/" .Values.stateFile.mountPath)) -}}
{{- fail "sendsms-whitelister: config.coordination.file.dir must differ from stateFile.mountPath: the state file is per pod, the coordination directory is shared" -}}
{{- end -}}
{{- if and .Values.stateFile.enabled (eq $co.file.volumeName .Values.stateFile.volumeName) -}}
{{- fail "sendsms-whitelister: config.coordination.file.volumeName must differ from stateFile.volumeName" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Environment of both `run` and `once`. */}}
{{- define "sendsms-whitelister.env" -}}
{{- include "sendsms-whitelister.checkCoordination" . -}}
{{- $c := .Values.config -}}
- name: SENDSMS_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ required "credentials.existingSecret is required" .Values.credentials.existingSecret }}
      key: {{ .Values.credentials.usernameKey }}
- name: SENDSMS_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.credentials.existingSecret }}
      key: {{ .Values.credentials.apiKeyKey }}
- name: SENDSMS_LISTEN
  value: {{ printf "0.0.0.0:%d" (int .Values.sidecar.port) | quote }}
{{- with $c.apiUrl }}
- name: SENDSMS_API_URL
  value: {{ . | quote }}
{{- end }}
{{- with $c.bootstrapProxy }}
- name: SENDSMS_BOOTSTRAP_PROXY
  value: {{ . | quote }}
{{- end }}
{{- with $c.bootstrapBind }}
- name: SENDSMS_BOOTSTRAP_BIND
  value: {{ . | quote }}
{{- end }}
{{- with $c.ipProviders }}
- name: SENDSMS_IP_PROVIDERS
  value: {{ join "," . | quote }}
{{- end }}
- name: SENDSMS_IP_QUORUM
  value: {{ $c.ipQuorum | quote }}
- name: SENDSMS_IP_FAMILIES
  value: {{ $c.ipFamilies | quote }}
- name: SENDSMS_ALLOW_NON_PUBLIC_IPS
  value: {{ $c.allowNonPublicIps | quote }}
- name: SENDSMS_POLL_INTERVAL
  value: {{ $c.pollInterval | quote }}
- name: SENDSMS_VERIFY_TIMEOUT
  value: {{ $c.verifyTimeout | quote }}
- name: SENDSMS_REVERIFY_INTERVAL
  value: {{ $c.reverifyInterval | quote }}
- name: SENDSMS_REQUEST_TIMEOUT
  value: {{ $c.requestTimeout | quote }}
- name: SENDSMS_API_BUDGET
  value: {{ $c.apiBudget | quote }}
{{- with $c.coordination }}
{{- if eq .mode "redis" }}
- name: SENDSMS_COORDINATION
{{- if .redis.existingSecret.name }}
  valueFrom:
    secretKeyRef:
      name: {{ .redis.existingSecret.name }}
      key: {{ .redis.existingSecret.key }}
{{- else }}
  value: {{ .redis.url | quote }}
{{- end }}
{{- else if eq .mode "file" }}
- name: SENDSMS_COORDINATION
  value: {{ printf "file:%s" .file.dir | quote }}
{{- end }}
{{- if ne .mode "none" }}
- name: SENDSMS_COORDINATION_LEASE
  value: {{ .lease | quote }}
{{- end }}
{{- end }}
{{- if .Values.stateFile.enabled }}
- name: SENDSMS_STATE_FILE
  value: {{ printf "%s/state.json" (trimSuffix "/" .Values.stateFile.mountPath) | quote }}
{{- end }}
- name: SENDSMS_LOG_FORMAT
  value: {{ $c.logFormat | quote }}
- name: RUST_LOG
  value: {{ $c.logLevel | quote }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The container both modes share; called with (dict "ctx" . "name" NAME "args" LIST). */}}
{{- define "sendsms-whitelister.containerBase" -}}
{{- $v := .ctx.Values -}}
name: {{ .name }}
image: {{ include "sendsms-whitelister.image" .ctx | quote }}
imagePullPolicy: {{ $v.image.pullPolicy }}
args: {{ toJson .args }}
env:
  {{- include "sendsms-whitelister.env" .ctx | trim | nindent 2 }}
resources:
  {{- toYaml $v.resources | nindent 2 }}
securityContext:
  {{- toYaml $v.securityContext | nindent 2 }}
{{- $fleetDir := eq $v.config.coordination.mode "file" }}
{{- if or $v.stateFile.enabled $fleetDir }}
volumeMounts:
{{- if $v.stateFile.enabled }}
  - name: {{ $v.stateFile.volumeName }}
    mountPath: {{ $v.stateFile.mountPath }}
{{- end }}
{{- if $fleetDir }}
  - name: {{ $v.config.coordination.file.volumeName }}
    mountPath: {{ $v.config.coordination.file.dir }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "sendsms-whitelister.statusPort" -}}
ports:
  - name: sendsms-status
    containerPort: {{ .Values.sidecar.port }}
    protocol: TCP
{{- end -}}

{{- define "sendsms-whitelister.probe" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
{{- end -}}

{{/* readinessProbe and livenessProbe of the long-running container, both modes. */}}
{{- define "sendsms-whitelister.runProbes" -}}
{{- $p := .Values.probes -}}
{{- $port := .Values.sidecar.port -}}
{{- if $p.readiness.enabled }}
readinessProbe:
  {{- include "sendsms-whitelister.probe" (dict "path" "/readyz" "port" $port "probe" $p.readiness) | nindent 2 }}
{{- end }}
{{- if $p.liveness.enabled }}
livenessProbe:
  {{- include "sendsms-whitelister.probe" (dict "path" "/healthz" "port" $port "probe" $p.liveness) | nindent 2 }}
{{- end }}
{{- end -}}
