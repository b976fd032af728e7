{{/* Names, labels and the few values that several templates derive the same way. */}}

{{- define "vlq.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object name prefix; truncated so that "<fullname>-<component>-<suffix>" stays within 63 characters. */}}
{{- define "vlq.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "vlq.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vlq.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vlq.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "vlq.labels" -}}
helm.sh/chart: {{ include "vlq.chart" . }}
{{ include "vlq.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vlq
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Per-component labels: call with (dict "ctx" $ "component" "gateway"). */}}
{{- define "vlq.componentSelectorLabels" -}}
{{ include "vlq.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "vlq.componentLabels" -}}
{{ include "vlq.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "vlq.gateway.fullname" -}}{{ include "vlq.fullname" . }}-gateway{{- end }}
{{- define "vlq.worker.fullname" -}}{{ include "vlq.fullname" . }}-worker{{- end }}
{{- define "vlq.redis.fullname" -}}{{ include "vlq.fullname" . }}-redis{{- end }}

{{/* The gateway listens here; gateway/__main__.py fixes the port. */}}
{{- define "vlq.gateway.containerPort" -}}8000{{- end }}
{{/* ---- Gateway ---------------------------------------------------------------------------------------- */}}

{{/* The API key file is mounted here, always under this name (VLQ_GATEWAY_API_KEYS_FILE). */}}
{{- define "vlq.gateway.apiKeysDir" -}}/etc/vlq/api-keys{{- end }}
{{- define "vlq.gateway.apiKeysFile" -}}keys.json{{- end }}

{{/* "true" when the chart renders the API key Secret from auth.tenants. */}}
{{- define "vlq.gateway.createKeysSecret" -}}
{{- if and .Values.auth.enabled .Values.auth.tenants (not .Values.auth.existingSecret) }}true{{ end }}
{{- end }}

{{- define "vlq.gateway.keysSecretName" -}}
{{- .Values.auth.existingSecret | default (printf "%s-api-keys" (include "vlq.gateway.fullname" .)) }}
{{- end }}

{{- define "vlq.gateway.keysSecretKey" -}}
{{- if .Values.auth.existingSecret }}{{ .Values.auth.existingSecretKey }}{{ else }}{{ include "vlq.gateway.apiKeysFile" . }}{{ end }}
{{- end }}

{{/* The key file as the chart writes it: JSON with sorted keys, so that the checksum only moves with it. */}}
{{- define "vlq.gateway.keysJson" -}}
{{- toJson .Values.auth.tenants }}
{{- end }}

{{/*
What the gateway pods' checksum/api-keys annotation hashes: the chart-made key file, or the existing Secret's
name, key and (on install/upgrade, when helm can read it) its data. A new key therefore rolls the pods, which
read the file only at start. An existing Secret changed with kubectl alone needs
`kubectl rollout restart deployment/<gateway>` (or any `helm upgrade`).
*/}}
{{- define "vlq.gateway.keysChecksum" -}}
{{- if .Values.auth.existingSecret }}
{{- $found := lookup "v1" "Secret" .Release.Namespace .Values.auth.existingSecret }}
{{- $data := dict }}
{{- if $found }}{{- $data = $found.data | default dict }}{{- end }}
{{- printf "%s/%s/%s" .Values.auth.existingSecret .Values.auth.existingSecretKey (index $data .Values.auth.existingSecretKey | default "") | sha256sum }}
{{- else }}
{{- include "vlq.gateway.keysJson" . | sha256sum }}
{{- end }}
{{- end }}

{{/* VLQ_GATEWAY_REQUIRE_LIVE_WORKER: with scale-to-zero no worker runs until a job is queued, so it must be false. */}}
{{- define "vlq.gateway.requireLiveWorker" -}}
{{- $v := .Values.gateway.config.requireLiveWorker }}
{{- if eq (toString $v) "auto" }}
{{- not (include "vlq.autoscaling.scalesToZero" .) }}
{{- else }}
{{- $v }}
{{- end }}
{{- end }}

{{- define "vlq.autoscaling.scalesToZero" -}}
{{- if and (eq .Values.autoscaling.mode "keda") .Values.autoscaling.scaleToZero }}true{{ end }}
{{- end }}

{{/* Bytes of an nginx size ("50m", "512k", "1g", "1048576"; k/m/g are powers of 1024). */}}
{{- define "vlq.nginxSizeBytes" -}}
{{- $size := toString . }}
{{- $unit := lower (regexFind "[kKmMgG]$" $size) }}
{{- $number := trimSuffix $unit (lower $size) | int64 }}
{{- $factor := get (dict "" 1 "k" 1024 "m" 1048576 "g" 1073741824) $unit }}
{{- mul $number $factor }}
{{- end }}

{{/* The worker serves /healthz and /metrics here (VLQ_WORKER_METRICS_PORT). */}}
{{- define "vlq.worker.metricsPort" -}}9100{{- end }}

{{- define "vlq.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}

{{/* RQ keeps each queue as the list rq:queue:<name>: QUEUE_NAME and BATCH_QUEUE_NAME (worker/constants.py). */}}
{{- define "vlq.queueList" -}}rq:queue:vlq-infer{{- end }}
{{- define "vlq.batchQueueList" -}}rq:queue:vlq-infer-batch{{- end }}

{{/* ---- Redis connection ------------------------------------------------------------------------------ */}}

{{- define "vlq.redis.host" -}}
{{- if .Values.redis.enabled }}
{{- printf "%s.%s.svc" (include "vlq.redis.fullname" .) .Release.Namespace }}
{{- else }}
{{- .Values.externalRedis.host }}
{{- end }}
{{- end }}

{{- define "vlq.redis.port" -}}
{{- if .Values.redis.enabled }}6379{{ else }}{{ .Values.externalRedis.port }}{{ end }}
{{- end }}

{{- define "vlq.redis.db" -}}
{{- if .Values.redis.enabled }}0{{ else }}{{ .Values.externalRedis.db }}{{ end }}
{{- end }}

{{- define "vlq.redis.tls" -}}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.tls }}true{{ end }}
{{- end }}

{{/* "true" when clients must authenticate; the in-cluster Redis always requires a password. */}}
{{- define "vlq.redis.hasPassword" -}}
{{- if or .Values.redis.enabled .Values.externalRedis.password .Values.externalRedis.existingSecret }}true{{ end }}
{{- end }}

{{/* "true" when the chart itself renders the password Secret. */}}
{{- define "vlq.redis.createSecret" -}}
{{- if .Values.redis.enabled }}
{{- if not .Values.redis.auth.existingSecret }}true{{ end }}
{{- else if and .Values.externalRedis.password (not .Values.externalRedis.existingSecret) }}true
{{- end }}
{{- end }}

{{- define "vlq.redis.secretName" -}}
{{- if and .Values.redis.enabled .Values.redis.auth.existingSecret }}
{{- .Values.redis.auth.existingSecret }}
{{- else if and (not .Values.redis.enabled) .Values.externalRedis.existingSecret }}
{{- .Values.externalRedis.existingSecret }}
{{- else }}
{{- include "vlq.redis.fullname" . }}
{{- end }}
{{- end }}

{{- define "vlq.redis.secretKey" -}}
{{- if .Values.redis.enabled }}
{{- .Values.redis.auth.existingSecretPasswordKey }}
{{- else }}
{{- .Values.externalRedis.existingSecretPasswordKey }}
{{- end }}
{{- end }}

{{/*
Env entries giving a container REDIS_PASSWORD and <urlVar>, a redis:// URL with the password filled in by the
kubelet's $(VAR) substitution, so the password never appears in a ConfigMap or in the pod spec.
Call with (dict "ctx" $ "urlVar" "VLQ_GATEWAY_REDIS_URL").
*/}}
{{- define "vlq.redis.env" -}}
{{- $ctx := .ctx }}
{{- $scheme := ternary "rediss" "redis" (eq (include "vlq.redis.tls" $ctx) "true") }}
{{- $hostPort := printf "%s:%s/%s" (include "vlq.redis.host" $ctx) (include "vlq.redis.port" $ctx) (include "vlq.redis.db" $ctx) }}
{{- if include "vlq.redis.hasPassword" $ctx }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "vlq.redis.secretName" $ctx }}
      key: {{ include "vlq.redis.secretKey" $ctx }}
- name: {{ .urlVar }}
  value: {{ printf "%s://:$(REDIS_PASSWORD)@%s" $scheme $hostPort | quote }}
{{- else }}
- name: {{ .urlVar }}
  value: {{ printf "%s://%s" $scheme $hostPort | quote }}
{{- end }}
{{- end }}

{{/* ---- Autoscaling ------------------------------------------------------------------------------------ */}}

{{/* Jobs (queued + started) one worker is meant to hold: ceil(maxInflight x targetUtilization), at least 1. */}}
{{- define "vlq.autoscaling.targetJobsPerWorker" -}}
{{- $target := mulf (float64 .Values.worker.maxInflight) (float64 .Values.autoscaling.targetUtilization) | ceil | int }}
{{- max 1 $target }}
{{- end }}

{{- define "vlq.autoscaling.minReplicas" -}}
{{- if include "vlq.autoscaling.scalesToZero" . }}0{{ else }}{{ .Values.autoscaling.minReplicas }}{{ end }}
{{- end }}

{{- define "vlq.prometheus.gatewayMatchers" -}}
{{- if .Values.autoscaling.prometheus.labelMatchers }}
{{- .Values.autoscaling.prometheus.labelMatchers }}
{{- else }}
{{- printf "namespace=%q,service=%q" .Release.Namespace (include "vlq.gateway.fullname" .) }}
{{- end }}
{{- end }}

{{/* Jobs held by the system: queued plus started. Every gateway replica exports the same gauges, hence max. */}}
{{- define "vlq.prometheus.jobsQuery" -}}
{{- $m := include "vlq.prometheus.gatewayMatchers" . }}
{{- printf "max(vlq_queue_depth{%s}) + max(vlq_queue_started_jobs{%s})" $m $m }}
{{- end }}

{{/* ---- Cross-value checks the JSON schema cannot express ---------------------------------------------- */}}

{{- define "vlq.validate" -}}
{{- $errors := list }}
{{- $a := .Values.autoscaling }}
{{- if gt (int $a.minReplicas) (int $a.maxReplicas) }}
{{- $errors = append $errors (printf "autoscaling.minReplicas (%v) must not exceed autoscaling.maxReplicas (%v)" $a.minReplicas $a.maxReplicas) }}
{{- end }}
{{- if and $a.scaleToZero (ne $a.mode "keda") }}
{{- $errors = append $errors (printf "autoscaling.scaleToZero needs autoscaling.mode=keda (a plain HPA cannot scale to zero); mode is %q" $a.mode) }}
{{- end }}
{{- if and (not .Values.redis.enabled) (not .Values.externalRedis.host) }}
{{- $errors = append $errors "redis.enabled=false needs externalRedis.host (and externalRedis.existingSecret or externalRedis.password when it requires AUTH)" }}
{{- end }}
{{- if lt (int .Values.worker.engine.limitMmImages) (int .Values.gateway.config.maxImages) }}
{{- $errors = append $errors (printf "worker.engine.limitMmImages (%v) must be at least gateway.config.maxImages (%v), or the engine rejects requests the gateway accepted" .Values.worker.engine.limitMmImages .Values.gateway.config.maxImages) }}
{{- end }}
{{- $auth := .Values.auth }}
{{- if and $auth.enabled (not $auth.tenants) (not $auth.existingSecret) }}
{{- $errors = append $errors "auth.enabled is true but no API keys are given: the gateway refuses to start without them. Make a key with `python -m gateway.auth new` (it prints the key, for the client, and its hash), then set auth.tenants (e.g. --set-json 'auth.tenants={\"acme\":[\"sha256:<hex>\"]}') or auth.existingSecret (a Secret whose key auth.existingSecretKey holds that JSON). To run with no keys at all, set auth.enabled=false explicitly." }}
{{- end }}
{{- if and $auth.tenants $auth.existingSecret }}
{{- $errors = append $errors (printf "set auth.tenants or auth.existingSecret (%q), not both: the gateway reads one key file" $auth.existingSecret) }}
{{- end }}
{{- $c := .Values.gateway.config }}
{{- if and (eq (toString $c.requireLiveWorker) "true") (include "vlq.autoscaling.scalesToZero" .) }}
{{- $errors = append $errors "gateway.config.requireLiveWorker=true contradicts autoscaling.scaleToZero: with no worker running the gateway would refuse the very job that wakes one; leave it auto or set false" }}
{{- end }}
{{- $imagesBytes := mul (int64 $c.maxImages) (int64 $c.maxImageBytes) }}
{{- if lt (int64 $c.maxBodyBytes) $imagesBytes }}
{{- $errors = append $errors (printf "gateway.config.maxBodyBytes (%d) must be at least gateway.config.maxImages x maxImageBytes (%d), or the gateway refuses uploads its own limits allow" (int64 $c.maxBodyBytes) $imagesBytes) }}
{{- end }}
{{- $ing := .Values.gateway.ingress }}
{{- if $ing.enabled }}
{{- $ingressBytes := include "vlq.nginxSizeBytes" $ing.maxBodySize | int64 }}
{{- if and (gt $ingressBytes 0) (lt $ingressBytes (int64 $c.maxBodyBytes)) }}
{{- $errors = append $errors (printf "gateway.ingress.maxBodySize (%s = %d bytes) must be at least gateway.config.maxBodyBytes (%d), or the ingress refuses bodies the gateway accepts" $ing.maxBodySize $ingressBytes (int64 $c.maxBodyBytes)) }}
{{- end }}
{{- end }}
{{- $gpuAlert := .Values.monitoring.prometheusRule.alerts.gpuMemory }}
{{- if and .Values.monitoring.prometheusRule.enabled $gpuAlert.enabled (le (float64 $gpuAlert.ratio) (float64 .Values.worker.engine.gpuMemoryUtilization)) }}
{{- $errors = append $errors (printf "monitoring.prometheusRule.alerts.gpuMemory.ratio (%v) must be above worker.engine.gpuMemoryUtilization (%v): vLLM claims that share up front, so the alert would always fire" $gpuAlert.ratio .Values.worker.engine.gpuMemoryUtilization) }}
{{- end }}
{{- if $errors }}
{{- $message := printf "invalid values:\n- %s" (join "\n- " $errors) }}
{{- fail $message }}
{{- /* `helm lint` turns fail into an INFO line and renders on; an unparsable line makes lint fail too. */}}
{{ printf "vlq-invalid-values: [%q" $message }}
{{- end }}
{{- end }}

{{/* ---- Webhooks --------------------------------------------------------------------------------------- */}}

{{- define "vlq.webhooks.fullname" -}}{{ include "vlq.fullname" . }}-webhooks{{- end }}
{{- define "vlq.webhooks.secretsDir" -}}/etc/vlq/webhooks{{- end }}
{{- define "vlq.webhooks.secretsFile" -}}secrets.json{{- end }}

{{/* "true" when some tenant can have a webhook secret: the chart's own Secret or an existing one. */}}
{{- define "vlq.webhooks.hasSecrets" -}}
{{- if or .Values.webhooks.existingSecret .Values.webhooks.secrets }}true{{ end }}
{{- end }}

{{- define "vlq.webhooks.secretName" -}}
{{- .Values.webhooks.existingSecret | default (printf "%s-secrets" (include "vlq.webhooks.fullname" .)) }}
{{- end }}

{{- define "vlq.webhooks.secretKey" -}}
{{- if .Values.webhooks.existingSecret }}{{ .Values.webhooks.existingSecretKey }}{{ else }}{{ include "vlq.webhooks.secretsFile" . }}{{ end }}
{{- end }}

{{/* The secrets file is read once at start: pods that mount it roll when it changes. */}}
{{- define "vlq.webhooks.secretsChecksum" -}}
{{- printf "%s/%s/%s" .Values.webhooks.existingSecret .Values.webhooks.existingSecretKey (toJson .Values.webhooks.secrets) | sha256sum }}
{{- end }}

{{/* The volume and mount of the secrets file, for the gateway and the webhook worker. */}}
{{- define "vlq.webhooks.volume" -}}
- name: webhook-secrets
  secret:
    secretName: {{ include "vlq.webhooks.secretName" . }}
    defaultMode: 0444
    items:
      - key: {{ include "vlq.webhooks.secretKey" . }}
        path: {{ include "vlq.webhooks.secretsFile" . }}
{{- end }}

{{- define "vlq.webhooks.mount" -}}
- name: webhook-secrets
  mountPath: {{ include "vlq.webhooks.secretsDir" . }}
  readOnly: true
{{- end }}
