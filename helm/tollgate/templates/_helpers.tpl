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

{{- define "tollgate.adminTokenSecret" -}}
{{- .Values.api.adminTokens.existingSecret | default (printf "%s-api-admin-tokens" (include "tollgate.fullname" .)) }}
{{- end }}

{{- define "tollgate.adminTokenSecretKey" -}}
{{- ternary .Values.api.adminTokens.existingSecretKey "admin-tokens" (ne .Values.api.adminTokens.existingSecret "") }}
{{- end }}

{{/* Whether tollgate gets admin token digests: a Secret of the user's, or digests rendered. */}}
{{- define "tollgate.adminTokens" -}}
{{- if or .Values.api.adminTokens.existingSecret .Values.api.adminTokens.digests }}true{{ end }}
{{- end }}

{{/* Whether --state-dir is passed: the API on, the memory store (Redis keeps the state). */}}
{{- define "tollgate.stateDir" -}}
{{- if and .Values.api.enabled .Values.api.stateDir.enabled (eq .Values.store "memory") }}true{{ end }}
{{- end }}

{{/* Combinations the schema cannot express; fails the render with a message. */}}
{{- define "tollgate.check" -}}
{{- if and (eq .Values.store "redis") (not .Values.redis.url) (not .Values.redis.existingSecret) }}
{{- fail "store: redis needs redis.url or redis.existingSecret" }}
{{- end }}
{{- if and (eq .Values.mode "sidecar") (not .Values.sidecar.containers) }}
{{- fail "mode: sidecar needs sidecar.containers (your Envoy and application containers)" }}
{{- end }}
{{- if .Values.xds.enabled }}
{{- if not .Values.xds.server }}
{{- fail "xds.enabled needs xds.server (the management server's host:port or URL)" }}
{{- end }}
{{- if not .Values.xds.nodeId }}
{{- fail "xds.enabled needs xds.nodeId (the node id the server keeps the limits for; Envoy Gateway's is envoy-ratelimit)" }}
{{- end }}
{{- if or .Values.limits .Values.existingLimitsConfigMap }}
{{- fail "limits and existingLimitsConfigMap are not used with xds.enabled (the limits come from xds.server): leave them empty" }}
{{- end }}
{{- if and (or .Values.xds.tlsSecret .Values.xds.serverName) (hasPrefix "http://" .Values.xds.server) }}
{{- fail "xds.tlsSecret and xds.serverName need an https:// xds.server (TLS), not http://" }}
{{- end }}
{{- else }}
{{- range $key := list "server" "nodeId" "startWithoutConfig" "tlsSecret" "serverName" }}
{{- if index $.Values.xds $key }}
{{- fail (printf "xds.%s needs xds.enabled: true (without it the limits come from the ConfigMap)" $key) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and .Values.xds.unhealthyUntilFirstConfig (not .Values.xds.startWithoutConfig) }}
{{- fail "xds.unhealthyUntilFirstConfig needs xds.startWithoutConfig (without it nothing is served before the first version anyway)" }}
{{- end }}
{{- if and .Values.xds.clientCertificate (not .Values.xds.tlsSecret) }}
{{- fail "xds.clientCertificate needs xds.tlsSecret (the Secret holding tls.crt and tls.key)" }}
{{- end }}
{{- if and (or .Values.grpcTls.requireClientCertificate .Values.grpcTls.clientSan) (not .Values.grpcTls.secret) }}
{{- fail "grpcTls.requireClientCertificate and grpcTls.clientSan need grpcTls.secret (the TLS Secret holding tls.crt, tls.key and ca.crt)" }}
{{- end }}
{{- if and .Values.grpcTls.clientSan (not .Values.grpcTls.requireClientCertificate) }}
{{- fail "grpcTls.clientSan needs grpcTls.requireClientCertificate (the name is checked on the client's certificate)" }}
{{- end }}
{{- if not .Values.api.enabled }}
{{- if include "tollgate.adminTokens" . }}
{{- fail "api.adminTokens needs api.enabled: true (the admin tokens are for the service API)" }}
{{- end }}
{{- if .Values.api.stateDir.existingClaim }}
{{- fail "api.stateDir.existingClaim needs api.enabled: true (runtime tenants come through the service API)" }}
{{- end }}
{{- end }}
{{- if .Values.api.stateDir.existingClaim }}
{{- if eq .Values.store "redis" }}
{{- fail "api.stateDir.existingClaim is for store: memory: with store: redis runtime tenants live in Redis (leave it empty)" }}
{{- end }}
{{- if not .Values.api.stateDir.enabled }}
{{- fail "api.stateDir.existingClaim needs api.stateDir.enabled: true" }}
{{- end }}
{{- if or .Values.autoscaling.enabled (gt (int .Values.replicas) 1) }}
{{- fail "api.stateDir.existingClaim holds one process's state (tollgate locks the directory): set replicas: 1 and autoscaling.enabled: false, or use store: redis for runtime tenants shared by every replica" }}
{{- end }}
{{- end }}
{{- end }}
