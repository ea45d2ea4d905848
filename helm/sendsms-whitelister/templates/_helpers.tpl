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

{{/* Pod labels of the gateway workloads (daemonset, deployment modes). */}}
{{- define "sendsms-whitelister.gatewaySelectorLabels" -}}
{{ include "sendsms-whitelister.selectorLabels" . }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "sendsms-whitelister.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "sendsms-whitelister.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
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
Init. Refuse to render that instead. Only the API server's version is known here: kubelets
may trail it by up to three minor versions (docs/deploy.md, "Kubelet version skew").
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
  value: {{ printf "%s:%d" .Values.sidecar.listenAddress (int .Values.sidecar.port) | quote }}
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

{{/*
The container every mode shares; called with (dict "ctx" . "name" NAME "args" LIST "gateway"
BOOL). "gateway" true: the long-running `run`, which serves the gateway when it is on.
*/}}
{{- define "sendsms-whitelister.containerBase" -}}
{{- $v := .ctx.Values -}}
{{- $gateway := and .gateway (include "sendsms-whitelister.gatewayOn" .ctx) -}}
{{- $token := and $gateway $v.gateway.tokenSecret -}}
name: {{ .name }}
image: {{ include "sendsms-whitelister.image" .ctx | quote }}
imagePullPolicy: {{ $v.image.pullPolicy }}
args: {{ toJson .args }}
env:
  {{- include "sendsms-whitelister.env" .ctx | trim | nindent 2 }}
  {{- with $v.extraCA.configMap }}
  - name: SENDSMS_EXTRA_CA_FILE
    value: {{ printf "/etc/sendsms-whitelister/ca/%s" $v.extraCA.key | quote }}
  {{- end }}
  {{- if .gateway }}
  {{- with $v.notifications }}
  {{- if .urlsSecret }}
  - name: SENDSMS_NOTIFY_URLS_FILE
    value: /run/secrets/sendsms-notify/urls
  {{- end }}
  {{- with .events }}
  - name: SENDSMS_NOTIFY_EVENTS
    value: {{ . | quote }}
  {{- end }}
  {{- if .heartbeatSecret }}
  - name: SENDSMS_HEARTBEAT_URL_FILE
    value: /run/secrets/sendsms-heartbeat/url
  {{- end }}
  {{- end }}
  {{- end }}
  {{- if $gateway }}
  - name: SENDSMS_GATEWAY_LISTEN
    value: {{ printf "%s:%d" (include "sendsms-whitelister.gatewayAddress" .ctx) (int $v.gateway.port) | quote }}
  - name: SENDSMS_GATEWAY_HOLD
    value: {{ $v.gateway.hold | quote }}
  {{- if $token }}
  - name: SENDSMS_GATEWAY_TOKEN_FILE
    value: /run/secrets/sendsms-gateway/token
  {{- end }}
  {{- end }}
resources:
  {{- toYaml $v.resources | nindent 2 }}
securityContext:
  {{- toYaml $v.securityContext | nindent 2 }}
{{- $fleetDir := eq $v.config.coordination.mode "file" }}
{{- $notify := and .gateway $v.notifications.urlsSecret }}
{{- $heartbeat := and .gateway $v.notifications.heartbeatSecret }}
{{- if or $v.stateFile.enabled $fleetDir $token $notify $heartbeat $v.extraCA.configMap }}
volumeMounts:
{{- if $v.stateFile.enabled }}
  - name: {{ $v.stateFile.volumeName }}
    mountPath: {{ $v.stateFile.mountPath }}
{{- end }}
{{- if $token }}
  - name: sendsms-gateway-token
    mountPath: /run/secrets/sendsms-gateway
    readOnly: true
{{- end }}
{{- if $notify }}
  - name: sendsms-notify
    mountPath: /run/secrets/sendsms-notify
    readOnly: true
{{- end }}
{{- if $heartbeat }}
  - name: sendsms-heartbeat
    mountPath: /run/secrets/sendsms-heartbeat
    readOnly: true
{{- end }}
{{- if $v.extraCA.configMap }}
  - name: sendsms-extra-ca
    mountPath: /etc/sendsms-whitelister/ca
    readOnly: true
{{- end }}
{{- if $fleetDir }}
  - name: {{ $v.config.coordination.file.volumeName }}
    mountPath: {{ $v.config.coordination.file.dir }}
{{- end }}
{{- end }}
{{- end -}}

{{/* "true" when the gateway runs: always in daemonset and deployment modes. */}}
{{- define "sendsms-whitelister.gatewayOn" -}}
{{- if or (ne .Values.mode "sidecar") .Values.gateway.enabled }}true{{ end -}}
{{- end -}}

{{/* In a pod next to the app, the gateway takes loopback callers only. */}}
{{- define "sendsms-whitelister.gatewayAddress" -}}
{{- if eq .Values.mode "sidecar" }}127.0.0.1{{ else }}{{ .Values.sidecar.listenAddress }}{{ end -}}
{{- end -}}

{{/* ports of the long-running container; called with (dict "ctx" . "gateway" BOOL). */}}
{{- define "sendsms-whitelister.ports" -}}
ports:
  - name: sendsms-status
    containerPort: {{ .ctx.Values.sidecar.port }}
    protocol: TCP
{{- if and .gateway (include "sendsms-whitelister.gatewayOn" .ctx) }}
  - name: sendsms-gateway
    containerPort: {{ .ctx.Values.gateway.port }}
    protocol: TCP
{{- end }}
{{- end -}}

{{/* A duration value (90s, 2m, 1h30m; the schema's form) in seconds, as a float. */}}
{{- define "sendsms-whitelister.seconds" -}}
{{- $units := dict "ns" 0.000000001 "us" 0.000001 "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 "d" 86400.0 -}}
{{- $total := 0.0 -}}
{{- range regexFindAll "[0-9]+(ns|us|ms|s|m|h|d)" (toString .) -1 -}}
{{- $n := regexFind "^[0-9]+" . | float64 -}}
{{- $total = addf $total (mulf $n (get $units (regexReplaceAll "^[0-9]+" . ""))) -}}
{{- end -}}
{{- $total -}}
{{- end -}}

{{/*
The native sidecar's startup probe holds the app back until the first verification: its
budget must outlast detection (requestTimeout) and verification (verifyTimeout), and, when
coordinated, two leases, as long as a member may wait for the holder's record. A smaller
budget makes the kubelet kill the sidecar mid-verification, again and again.
*/}}
{{- define "sendsms-whitelister.checkStartupBudget" -}}
{{- $v := .Values -}}
{{- $p := $v.probes.startup -}}
{{- $budget := mul $p.periodSeconds $p.failureThreshold -}}
{{- $need := addf (include "sendsms-whitelister.seconds" $v.config.requestTimeout) (include "sendsms-whitelister.seconds" $v.config.verifyTimeout) -}}
{{- $why := printf "config.requestTimeout (%s) + config.verifyTimeout (%s)" $v.config.requestTimeout $v.config.verifyTimeout -}}
{{- if ne $v.config.coordination.mode "none" -}}
{{- $need = addf $need (mulf 2 (include "sendsms-whitelister.seconds" $v.config.coordination.lease)) -}}
{{- $why = printf "%s + 2 x config.coordination.lease (%s)" $why $v.config.coordination.lease -}}
{{- end -}}
{{- if lt (float64 $budget) (float64 $need) -}}
{{- fail (printf "sendsms-whitelister: the startup probe's budget, probes.startup.periodSeconds x failureThreshold = %ds, is below %s = %.0fs: the kubelet would restart the sidecar before its first verification can end. Raise probes.startup.failureThreshold to at least %d" (int $budget) $why (float64 $need) (int (ceil (divf $need $p.periodSeconds)))) -}}
{{- end -}}
{{- end -}}

{{/*
Mode rules the schema cannot state: a gateway reachable from other pods needs a token.
Called from templates/validate.yaml, so they hold whatever else renders.
*/}}
{{- define "sendsms-whitelister.checkMode" -}}
{{- if and (ne .Values.mode "sidecar") (not .Values.gateway.tokenSecret) -}}
{{- fail (printf "sendsms-whitelister: mode=%s serves the gateway to other pods and needs gateway.tokenSecret, the name of an existing Secret with the token under the key `token` (kubectl create secret generic sendsms-gateway --from-literal=token=$(openssl rand -hex 32))" .Values.mode) -}}
{{- end -}}
{{- end -}}

{{- define "sendsms-whitelister.probe" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
{{- end -}}

{{/*
readinessProbe and livenessProbe of the long-running container. Gateway modes probe
/healthz for readiness: a gateway still verifying accepts calls and holds them, where a
NotReady one would leave its Service (on its node, with internalTrafficPolicy: Local)
without an endpoint.
*/}}
{{- define "sendsms-whitelister.runProbes" -}}
{{- $p := .Values.probes -}}
{{- $port := .Values.sidecar.port -}}
{{- if $p.readiness.enabled }}
readinessProbe:
  {{- include "sendsms-whitelister.probe" (dict "path" (ternary "/readyz" "/healthz" (eq .Values.mode "sidecar")) "port" $port "probe" $p.readiness) | nindent 2 }}
{{- end }}
{{- if $p.liveness.enabled }}
livenessProbe:
  {{- include "sendsms-whitelister.probe" (dict "path" "/healthz" "port" $port "probe" $p.liveness) | nindent 2 }}
{{- end }}
{{- end -}}
