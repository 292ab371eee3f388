{{/* Names, labels and the checks every template relies on. */}}

{{- define "tollgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tollgate.fullname" -}}
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

{{- define "tollgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tollgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tollgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tollgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: {{ ternary "rate-limit-service" "sidecar" (eq .Values.mode "shared") }}
{{- end }}

{{- define "tollgate.limitsConfigMap" -}}
{{- .Values.existingLimitsConfigMap | default (printf "%s-limits" (include "tollgate.fullname" .)) }}
{{- end }}

{{- define "tollgate.redisSecret" -}}
{{- .Values.redis.existingSecret | default (printf "%s-redis" (include "tollgate.fullname" .)) }}
{{- end }}

{{- define "tollgate.redisSecretKey" -}}
{{- ternary .Values.redis.existingSecretKey "url" (ne .Values.redis.existingSecret "") }}
{{- end }}

{{/* Combinations the schema cannot express; fails the render with a message. */}}
{{- define "tollgate.check" -}}
{{- if and (eq .Values.store "redis") (not .Values.redis.url) (not .Values.redis.existingSecret) }}
{{- fail "store: redis needs redis.url or redis.existingSecret" }}
{{- end }}
{{- if and (eq .Values.mode "sidecar") (not .Values.sidecar.containers) }}
{{- fail "mode: sidecar needs sidecar.containers (your Envoy and application containers)" }}
{{- end }}
{{- end }}
