{{/*
Internal helpers. They take the evbridge chart's own context: `.` inside this chart, or
`index .Subcharts "evbridge"` from an application chart (the public templates in
_sidecar.tpl make that switch themselves).
*/}}

{{/* The chart name, overridable. */}}
{{- define "evbridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The resource name prefix: <release>-evbridge, or the release name when it already holds
the chart name. Identical from the subchart and from the parent, since both pass the
subchart's context.
*/}}
{{- define "evbridge.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "evbridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource this chart renders. */}}
{{- define "evbridge.labels" -}}
helm.sh/chart: {{ include "evbridge.chart" . }}
{{ include "evbridge.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: evbridge
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "evbridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "evbridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The pod label the metrics Service selects; the app's pod carries it (evbridge.podLabels). */}}
{{- define "evbridge.podSelectorLabels" -}}
evbridge/sidecar: {{ include "evbridge.fullname" . }}
{{- end }}

{{- define "evbridge.image" -}}
{{- $repository := .Values.image.repository -}}
{{- if .Values.image.registry -}}
{{- $repository = printf "%s/%s" .Values.image.registry $repository -}}
{{- end -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end }}

{{- define "evbridge.socketPath" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.listen.socketDir) .Values.listen.socketName -}}
{{- end }}

{{- define "evbridge.configPath" -}}
/etc/evbridge/evbridge.yaml
{{- end }}

{{- define "evbridge.dataClaimName" -}}
{{- .Values.persistence.existingClaim | default (printf "%s-data" (include "evbridge.fullname" .)) -}}
{{- end }}

{{/*
The evbridge config file: values.config plus the keys the chart owns (listen, metrics,
delivery.spool_dir). Fails the render on values that cannot work in a pod.
*/}}
{{- define "evbridge.configYaml" -}}
{{- $v := .Values -}}
{{- $cfg := deepCopy ($v.config | default dict) -}}
{{- range $key := list "listen" "metrics" "auth" }}
{{- if hasKey $cfg $key }}
{{- fail (printf "evbridge: config.%s is set by the chart; use the chart values listen.*, metrics.* and auth.* instead" $key) }}
{{- end }}
{{- end }}
{{- $listen := dict "unix" (include "evbridge.socketPath" .) "unix_mode" $v.listen.socketMode "tcp" nil -}}
{{- if $v.listen.tcp }}
{{- $_ := set $listen "tcp" $v.listen.tcp }}
{{- end }}
{{- $_ := set $cfg "listen" $listen -}}
{{- $bind := $v.metrics.bindAddress | default "0.0.0.0" -}}
{{- if contains ":" $bind }}
{{- $bind = printf "[%s]" $bind }}
{{- end }}
{{- $_ := set $cfg "metrics" (dict "tcp" (printf "%s:%d" $bind (int $v.metrics.port))) -}}
{{- if hasKey $cfg "tracing" }}
{{- fail "evbridge: config.tracing is set by the chart; use the chart values tracing.* instead" }}
{{- end }}
{{- if $v.tracing.enabled }}
{{- $tracing := dict "enabled" true "sampler_ratio" $v.tracing.samplerRatio "service_name" ($v.tracing.serviceName | default (include "evbridge.fullname" .)) }}
{{- if $v.tracing.endpoint }}
{{- $_ := set $tracing "endpoint" $v.tracing.endpoint }}
{{- end }}
{{- $_ := set $cfg "tracing" $tracing }}
{{- end }}
{{- if hasKey $cfg "delivery" }}
{{- $delivery := $cfg.delivery | default dict }}
{{- if hasKey $delivery "spool_dir" }}
{{- fail "evbridge: config.delivery.spool_dir is set by the chart (persistence.mountPath + /spool)" }}
{{- end }}
{{- $_ := set $delivery "spool_dir" (printf "%s/spool" (trimSuffix "/" $v.persistence.mountPath)) }}
{{- $_ := set $cfg "delivery" $delivery }}
{{- end }}
{{- /* The pod must give the bridge time to drain after SIGTERM. */ -}}
{{- $grace := 10.0 -}}
{{- if and (hasKey $cfg "shutdown") (kindIs "map" $cfg.shutdown) (hasKey $cfg.shutdown "grace_s") }}
{{- $grace = $cfg.shutdown.grace_s | float64 }}
{{- end }}
{{- if le (float64 $v.terminationGracePeriodSeconds) $grace }}
{{- fail (printf "evbridge: terminationGracePeriodSeconds (%v) must be above config.shutdown.grace_s (%v)" $v.terminationGracePeriodSeconds $grace) }}
{{- end }}
{{- /* Every *_env option of a sink must name a variable the bridge container gets. */ -}}
{{- if and $v.credentials.env (not $v.credentials.existingSecret) }}
{{- fail "evbridge: credentials.env needs credentials.existingSecret (the Secret holding those keys)" }}
{{- end }}
{{- if not $v.sidecar.extraEnvFrom }}
{{- $provided := keys ($v.credentials.env | default dict) }}
{{- range $v.sidecar.extraEnv }}
{{- $provided = append $provided .name }}
{{- end }}
{{- range $i, $sink := ($cfg.sinks | default list) }}
{{- range $key, $val := $sink }}
{{- if and (hasSuffix "_env" $key) $val (not (has $val $provided)) }}
{{- fail (printf "evbridge: config.sinks[%d].%s names the variable %s, which the bridge container does not get: add credentials.env.%s (a key of credentials.existingSecret) or an entry in sidecar.extraEnv" $i $key $val $val) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}
