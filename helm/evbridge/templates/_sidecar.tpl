{{/*
The public library: named templates an application chart includes to put evbridge in
its pod. Call each with the application chart's root context (`.` or `$`); the
templates find the evbridge subchart's values, name and version through
`.Subcharts.evbridge` (the dependency must be called `evbridge`, without an alias).

  spec:
    template:
      metadata:
        labels:
          {{- include "evbridge.podLabels" . | nindent 8 }}
        annotations:
          {{- include "evbridge.podAnnotations" . | nindent 8 }}
      spec:
        terminationGracePeriodSeconds: {{ include "evbridge.terminationGracePeriodSeconds" . }}
        {{- with include "evbridge.initContainers" . }}
        initContainers:
          {{- . | nindent 8 }}
        {{- end }}
        containers:
          - name: app
            env:
              {{- include "evbridge.appEnv" . | nindent 12 }}
            volumeMounts:
              {{- include "evbridge.appVolumeMounts" . | nindent 12 }}
          {{- with include "evbridge.containers" . }}
          {{- . | nindent 8 }}
          {{- end }}
        volumes:
          {{- include "evbridge.volumes" . | nindent 8 }}

Each list template renders list items (`- ...`) at column 0, meant for `nindent`.
*/}}

{{/* Fails with a clear message when called without the evbridge chart's values in reach. */}}
{{- define "evbridge.assertContext" -}}
{{- if not (and (hasKey .Values "listen") (hasKey .Values "sidecar")) -}}
{{- fail "evbridge: the evbridge templates need the evbridge chart as a dependency called `evbridge` (no alias); call them with the root context, e.g. include \"evbridge.volumes\" ." -}}
{{- end -}}
{{- end }}

{{/* The bridge container; with restartPolicy: Always in native mode (an init container then). */}}
{{- define "evbridge.container" -}}
{{- $c := index (.Subcharts | default dict) "evbridge" | default . -}}
{{- include "evbridge.assertContext" $c -}}
{{- $v := $c.Values -}}
name: {{ $v.sidecar.name }}
image: {{ include "evbridge.image" $c | quote }}
imagePullPolicy: {{ $v.image.pullPolicy }}
{{- if eq $v.sidecar.mode "native" }}
restartPolicy: Always
{{- end }}
args:
  - serve
  {{- range $v.sidecar.extraArgs }}
  - {{ . | quote }}
  {{- end }}
workingDir: {{ $v.persistence.mountPath }}
env:
  - name: EVBRIDGE_CONFIG
    value: {{ include "evbridge.configPath" $c }}
  {{- if $v.auth.existingSecret }}
  - name: EVBRIDGE_TOKEN
    valueFrom:
      secretKeyRef:
        name: {{ $v.auth.existingSecret }}
        key: {{ $v.auth.existingSecretKey }}
  {{- end }}
  {{- range $name, $key := $v.credentials.env }}
  - name: {{ $name }}
    valueFrom:
      secretKeyRef:
        name: {{ $v.credentials.existingSecret }}
        key: {{ $key }}
  {{- end }}
  {{- with $v.sidecar.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with $v.sidecar.extraEnvFrom }}
envFrom:
  {{- toYaml . | nindent 2 }}
{{- end }}
ports:
  - name: {{ $v.metrics.portName }}
    containerPort: {{ int $v.metrics.port }}
    protocol: TCP
{{- with $v.probes.startup }}
{{- if .enabled }}
{{- /*
The API socket is bound only once every sink has started (the metrics listener, and
/healthz, come up first), so "started" means: the socket accepts a connection (and the
loopback TCP listener, when on). In native mode the kubelet starts the app after this.
*/}}
startupProbe:
  exec:
    command:
      - python
      - -c
      - |
        {{- include "evbridge.startupCheck" $c | nindent 8 }}
      - {{ include "evbridge.socketPath" $c }}
      {{- with $v.listen.tcp }}
      - {{ . | quote }}
      {{- end }}
  {{- toYaml (omit . "enabled") | nindent 2 }}
{{- end }}
{{- end }}
{{- with $v.probes.liveness }}
{{- if .enabled }}
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ $v.metrics.portName }}
  {{- toYaml (omit . "enabled") | nindent 2 }}
{{- end }}
{{- end }}
{{- with $v.probes.readiness }}
{{- if .enabled }}
readinessProbe:
  httpGet:
    path: /readyz
    port: {{ $v.metrics.portName }}
  {{- toYaml (omit . "enabled") | nindent 2 }}
{{- end }}
{{- end }}
{{- with $v.resources }}
resources:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.securityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumeMounts:
  - name: evbridge-socket
    mountPath: {{ $v.listen.socketDir }}
  - name: evbridge-config
    mountPath: {{ include "evbridge.configPath" $c | dir }}
    readOnly: true
  - name: evbridge-data
    mountPath: {{ $v.persistence.mountPath }}
  - name: evbridge-tmp
    mountPath: /tmp
  {{- with $v.sidecar.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/* The startup probe: connect to the Unix socket (argv 1) and each host:port after it. */}}
{{- define "evbridge.startupCheck" -}}
import socket, sys
unix = socket.socket(socket.AF_UNIX)
unix.settimeout(1)
unix.connect(sys.argv[1])
for address in sys.argv[2:]:
    host, port = address.rsplit(":", 1)
    socket.create_connection((host.strip("[]"), int(port)), timeout=1).close()
{{- end }}

{{/* "true" in native sidecar mode, "" otherwise. */}}
{{- define "evbridge.native" -}}
{{- $c := index (.Subcharts | default dict) "evbridge" | default . -}}
{{- include "evbridge.assertContext" $c -}}
{{- if eq $c.Values.sidecar.mode "native" }}true{{ end -}}
{{- end }}

{{/* Items for the pod's initContainers: the bridge in native mode, nothing otherwise. */}}
{{- define "evbridge.initContainers" -}}
{{- if include "evbridge.native" . -}}
- {{ include "evbridge.container" . | nindent 2 | trim }}
{{- end -}}
{{- end }}

{{/* Items for the pod's containers: the bridge in container mode, nothing otherwise. */}}
{{- define "evbridge.containers" -}}
{{- if not (include "evbridge.native" .) -}}
- {{ include "evbridge.container" . | nindent 2 | trim }}
{{- end -}}
{{- end }}

{{/* Items for the pod's volumes: socket, config, data (spool) and /tmp of the bridge. */}}
{{- define "evbridge.volumes" -}}
{{- $c := index (.Subcharts | default dict) "evbridge" | default . -}}
{{- include "evbridge.assertContext" $c -}}
{{- $v := $c.Values -}}
- name: evbridge-socket
  {{- if $v.listen.socketMedium }}
  emptyDir:
    medium: {{ $v.listen.socketMedium }}
  {{- else }}
  emptyDir: {}
  {{- end }}
- name: evbridge-config
  configMap:
    name: {{ include "evbridge.fullname" $c }}
- name: evbridge-data
  {{- if $v.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "evbridge.dataClaimName" $c }}
  {{- else if $v.persistence.emptyDirSizeLimit }}
  emptyDir:
    sizeLimit: {{ $v.persistence.emptyDirSizeLimit }}
  {{- else }}
  emptyDir: {}
  {{- end }}
- name: evbridge-tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}

{{/* Items for the app container's env: EVBRIDGE_SOCKET, and EVBRIDGE_TOKEN when auth is on. */}}
{{- define "evbridge.appEnv" -}}
{{- $c := index (.Subcharts | default dict) "evbridge" | default . -}}
{{- include "evbridge.assertContext" $c -}}
{{- $v := $c.Values -}}
- name: EVBRIDGE_SOCKET
  value: {{ include "evbridge.socketPath" $c }}
{{- if $v.auth.existingSecret }}
- name: EVBRIDGE_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $v.auth.existingSecret }}
      key: {{ $v.auth.existingSecretKey }}
{{- end }}
{{- end }}

{{/* Items for the app container's volumeMounts: the socket directory, read-only. */}}
{{- define "evbridge.appVolumeMounts" -}}
{{- $c := index (.Subcharts | default dict) "evbridge" | default . -}}
{{- include "evbridge.assertContext" $c -}}
- name: evbridge-socket
  mountPath: {{ $c.Values.listen.socketDir }}
  readOnly: true
{{- end }}

{{/* Entries for the pod template's labels: the label the metrics Service selects. */}}
{{- define "evbridge.podLabels" -}}
{{- $c := index (.Subcharts | default dict) "evbridge" | default . -}}
{{- include "evbridge.assertContext" $c -}}
{{ include "evbridge.podSelectorLabels" $c }}
{{- end }}

{{/* Entries for the pod template's annotations: a checksum that rolls pods on config changes. */}}
{{- define "evbridge.podAnnotations" -}}
{{- $c := index (.Subcharts | default dict) "evbridge" | default . -}}
{{- include "evbridge.assertContext" $c -}}
checksum/evbridge-config: {{ include "evbridge.configYaml" $c | sha256sum }}
{{- end }}

{{/* The pod's terminationGracePeriodSeconds (checked to exceed config.shutdown.grace_s). */}}
{{- define "evbridge.terminationGracePeriodSeconds" -}}
{{- $c := index (.Subcharts | default dict) "evbridge" | default . -}}
{{- include "evbridge.assertContext" $c -}}
{{- int $c.Values.terminationGracePeriodSeconds -}}
{{- end }}

{{/* Lines for an application chart's NOTES.txt. */}}
{{- define "evbridge.notes" -}}
{{- $c := index (.Subcharts | default dict) "evbridge" | default . -}}
{{- include "evbridge.assertContext" $c -}}
{{- $v := $c.Values -}}
evbridge runs as a {{ if eq $v.sidecar.mode "native" }}native sidecar (init container with restartPolicy: Always){{ else }}second container{{ end }} in the pod.
  Socket for the app:  $EVBRIDGE_SOCKET = {{ include "evbridge.socketPath" $c }}
  Send an event:       curl --unix-socket "$EVBRIDGE_SOCKET" http://evbridge/v1/events -H 'content-type: application/json' -d '{"type": "example.created", "data": {}}'
  Config:              ConfigMap {{ include "evbridge.fullname" $c }} (key evbridge.yaml)
  Metrics and probes:  port {{ int $v.metrics.port }} (/metrics, /healthz, /readyz)
  Spool/data volume:   {{ if $v.persistence.enabled }}PersistentVolumeClaim {{ include "evbridge.dataClaimName" $c }}{{ else }}emptyDir (lost with the pod; set persistence.enabled for durable delivery across pods){{ end }}
{{- if $v.serviceMonitor.enabled }}
  ServiceMonitor:      {{ include "evbridge.fullname" $c }}
{{- end }}
{{- if $v.prometheusRule.enabled }}
  PrometheusRule:      {{ include "evbridge.fullname" $c }}
{{- end }}
{{- if and $v.persistence.enabled (has "ReadWriteOnce" $v.persistence.accessModes) }}

WARNING: the spool claim is ReadWriteOnce and belongs to one pod: run a single replica
(with strategy Recreate), or give each pod its own claim (StatefulSet).
{{- end }}
{{- end }}
