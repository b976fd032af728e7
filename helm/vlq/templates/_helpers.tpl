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

{{/* "true" when some worker pool scales to zero (keda with its autoscaling.scaleToZero). */}}
{{- define "vlq.autoscaling.scalesToZero" -}}
{{- range $p := include "vlq.workerPools" . | fromJsonArray }}
{{- if include "vlq.pool.scalesToZero" (dict "ctx" $ "pool" $p) }}true{{ break }}{{ end }}
{{- end }}
{{- end }}

{{- define "vlq.pool.scalesToZero" -}}
{{- if and (eq .ctx.Values.autoscaling.mode "keda") .pool.autoscaling.scaleToZero }}true{{ end }}
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

{{/*
RQ keeps each queue as the list rq:queue:<name>; every served model has its own pair,
<QUEUE_NAME>:<model> and <BATCH_QUEUE_NAME>:<model> (worker/constants.py). Call with a pool.
*/}}
{{- define "vlq.queueList" -}}rq:queue:vlq-infer:{{ .servedModelName }}{{- end }}
{{- define "vlq.batchQueueList" -}}rq:queue:vlq-infer-batch:{{ .servedModelName }}{{- end }}

{{/* ---- Worker pools ----------------------------------------------------------------------------------- */}}

{{/*
Deep merge for pool values: (dict "base" $b "over" $o) -> JSON. Maps merge key by key; anything else in
"over" wins as it is, false, 0, "", [] and an empty map {} included (sprig's mergeOverwrite would keep the
base's value for those, so a pool could not turn off or empty what worker sets).
*/}}
{{- define "vlq.deepMerge" -}}
{{- $out := deepCopy (default (dict) .base) }}
{{- range $k, $v := (default (dict) .over) }}
{{- $b := index $out $k }}
{{- if and (kindIs "map" $v) (kindIs "map" $b) $v }}
{{- $_ := set $out $k (include "vlq.deepMerge" (dict "base" $b "over" $v) | fromJson) }}
{{- else }}
{{- $_ := set $out $k $v }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* The autoscaling keys a pool may override; mode, prometheus and hpa stay release-wide. */}}
{{- define "vlq.pool.autoscalingKeys" -}}minReplicas maxReplicas scaleToZero targetUtilization behavior keda{{- end }}

{{/*
The worker pools as a JSON list, each pool being `worker` deep-merged with the pool's own keys, plus:
name, model, servedModelName (default: model), fullname (<fullname>-worker-<name>), autoscaling (the
release's autoscaling with the pool's overrides), alerts (monitoring.prometheusRule.alerts with the pool's
overrides) and given (the pool as written, for error messages). An empty workerPools is one pool "default"
serving model.name, which is today's single-model chart.
*/}}
{{- define "vlq.workerPools" -}}
{{- $given := .Values.workerPools }}
{{- if not $given }}
{{- $given = list (dict "name" "default" "model" .Values.model.name) }}
{{- end }}
{{- $autoscaling := dict }}
{{- range $k := splitList " " (include "vlq.pool.autoscalingKeys" .) }}
{{- $_ := set $autoscaling $k (index $.Values.autoscaling $k) }}
{{- end }}
{{- $alerts := .Values.monitoring.prometheusRule.alerts }}
{{- $pools := list }}
{{- range $raw := $given }}
{{- $over := omit $raw "name" "model" "servedModelName" "autoscaling" "alerts" }}
{{- $p := include "vlq.deepMerge" (dict "base" $.Values.worker "over" $over) | fromJson }}
{{- $_ := set $p "name" $raw.name }}
{{- $_ := set $p "model" $raw.model }}
{{- $_ := set $p "servedModelName" (default $raw.model $raw.servedModelName) }}
{{- $_ := set $p "fullname" (printf "%s-%s" (include "vlq.worker.fullname" $) $raw.name) }}
{{- $_ := set $p "autoscaling" (include "vlq.deepMerge" (dict "base" $autoscaling "over" $raw.autoscaling) | fromJson) }}
{{- $_ := set $p "alerts" (include "vlq.deepMerge" (dict "base" (pick $alerts "gpuMemory" "queueBacklog" "noWorkers") "over" $raw.alerts) | fromJson) }}
{{- $_ := set $p "given" (ternary $raw (dict) (gt (len $.Values.workerPools) 0)) }}
{{- $pools = append $pools $p }}
{{- end }}
{{- toJson $pools }}
{{- end }}

{{/* The served model names of all pools, in pool order (JSON list). */}}
{{- define "vlq.servedModels" -}}
{{- $names := list }}
{{- range $p := include "vlq.workerPools" . | fromJsonArray }}
{{- $names = append $names $p.servedModelName }}
{{- end }}
{{- toJson $names }}
{{- end }}

{{/* VLQ_GATEWAY_MODEL: gateway.defaultModel, else the first pool's served name. */}}
{{- define "vlq.defaultModel" -}}
{{- .Values.gateway.defaultModel | default (first (include "vlq.servedModels" . | fromJsonArray)) }}
{{- end }}

{{/* VLQ_GATEWAY_ADAPTERS: served name -> sorted adapter names, for the pools that serve adapters. */}}
{{- define "vlq.servedAdapters" -}}
{{- $out := dict }}
{{- range $p := include "vlq.workerPools" . | fromJsonArray }}
{{- with $p.lora.adapters }}
{{- $_ := set $out $p.servedModelName (keys . | sortAlpha) }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
The value a pool's setting comes from, for messages: workerPools[<name>].<path> when the pool sets it, else
<global> (worker.<path>, autoscaling.<key>, ...). Call with (dict "pool" $p "path" "engine.maxNumSeqs" "global" "worker.engine.maxNumSeqs").
*/}}
{{- define "vlq.pool.valuePath" -}}
{{- $node := .pool.given }}
{{- $found := true }}
{{- range $k := splitList "." .path }}
{{- if and $found (kindIs "map" $node) (hasKey $node $k) }}
{{- $node = index $node $k }}
{{- else }}
{{- $found = false }}
{{- end }}
{{- end }}
{{- if $found }}workerPools[{{ .pool.name }}].{{ .path }}{{ else }}{{ .global }}{{ end }}
{{- end }}

{{/* Labels of a pool's objects; call with (dict "ctx" $ "pool" $p). */}}
{{- define "vlq.worker.selectorLabels" -}}
{{ include "vlq.componentSelectorLabels" (dict "ctx" .ctx "component" "worker") }}
vlq/worker-pool: {{ .pool.name }}
{{- end }}

{{- define "vlq.worker.labels" -}}
{{ include "vlq.componentLabels" (dict "ctx" .ctx "component" "worker") }}
vlq/worker-pool: {{ .pool.name }}
{{- end }}

{{/* The data of a pool's ConfigMap, also hashed into its pods' checksum/config; call with (dict "ctx" $ "pool" $p). */}}
{{- define "vlq.worker.configData" -}}
{{- $p := .pool }}
{{- $e := $p.engine -}}
VLQ_WORKER_ENGINE: "vllm"
# Weights, and the name clients use: jobs are queued per served name (rq:queue:vlq-infer:<name>).
VLQ_WORKER_MODEL: {{ $p.model | quote }}
VLQ_WORKER_SERVED_MODEL_NAME: {{ $p.servedModelName | quote }}
VLQ_WORKER_DTYPE: {{ $e.dtype | quote }}
VLQ_WORKER_MAX_MODEL_LEN: {{ $e.maxModelLen | int64 | quote }}
VLQ_WORKER_ENABLE_CHUNKED_PREFILL: {{ $e.enableChunkedPrefill | quote }}
VLQ_WORKER_MAX_NUM_BATCHED_TOKENS: {{ $e.maxNumBatchedTokens | int64 | quote }}
VLQ_WORKER_MAX_NUM_SEQS: {{ $e.maxNumSeqs | int64 | quote }}
VLQ_WORKER_GPU_MEMORY_UTILIZATION: {{ $e.gpuMemoryUtilization | quote }}
VLQ_WORKER_LIMIT_MM_IMAGES: {{ $e.limitMmImages | int64 | quote }}
VLQ_WORKER_LIMIT_MM_VIDEOS: {{ $e.limitMmVideos | default 0 | int64 | quote }}
VLQ_WORKER_ENFORCE_EAGER: {{ $e.enforceEager | quote }}
VLQ_WORKER_TRUST_REMOTE_CODE: {{ $e.trustRemoteCode | quote }}
# LoRA adapters (name -> path or hub id); {} turns LoRA off. Requests name them "<served name>:<adapter>".
VLQ_WORKER_LORA_ADAPTERS: {{ toJson (default (dict) $p.lora.adapters) | quote }}
VLQ_WORKER_MAX_LORAS: {{ $p.lora.maxLoras | int64 | quote }}
VLQ_WORKER_MAX_LORA_RANK: {{ $p.lora.maxLoraRank | int64 | quote }}
VLQ_WORKER_MAX_INFLIGHT: {{ $p.maxInflight | int64 | quote }}
VLQ_WORKER_HEARTBEAT_TTL_S: {{ $p.heartbeatTtlSeconds | int64 | quote }}
# Drain for as long as a job may run; the pod's grace period adds terminationGraceMarginSeconds.
VLQ_WORKER_DRAIN_TIMEOUT_S: {{ .ctx.Values.jobTimeoutSeconds | int64 | quote }}
VLQ_WORKER_METRICS_PORT: {{ include "vlq.worker.metricsPort" .ctx | quote }}
# Weights, and vLLM's compile cache, live on the model cache volume so that a restart skips both.
HF_HOME: {{ printf "%s/huggingface" $p.modelCache.mountPath | quote }}
VLLM_CACHE_ROOT: {{ printf "%s/vllm" $p.modelCache.mountPath | quote }}
{{- end }}

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

{{/* Jobs (queued + started) one worker of a pool is meant to hold: ceil(maxInflight x targetUtilization), at
least 1. Call with a pool. */}}
{{- define "vlq.autoscaling.targetJobsPerWorker" -}}
{{- $target := mulf (float64 .maxInflight) (float64 .autoscaling.targetUtilization) | ceil | int }}
{{- max 1 $target }}
{{- end }}

{{/* Call with (dict "ctx" $ "pool" $p). */}}
{{- define "vlq.autoscaling.minReplicas" -}}
{{- if include "vlq.pool.scalesToZero" . }}0{{ else }}{{ .pool.autoscaling.minReplicas }}{{ end }}
{{- end }}

{{/* The External metric a pool's HPA scales on: autoscaling.hpa.metricName + "_" + pool name. */}}
{{- define "vlq.autoscaling.hpaMetricName" -}}
{{- printf "%s_%s" .ctx.Values.autoscaling.hpa.metricName (.pool.name | replace "-" "_") }}
{{- end }}

{{- define "vlq.prometheus.gatewayMatchers" -}}
{{- if .Values.autoscaling.prometheus.labelMatchers }}
{{- .Values.autoscaling.prometheus.labelMatchers }}
{{- else }}
{{- printf "namespace=%q,service=%q" .Release.Namespace (include "vlq.gateway.fullname" .) }}
{{- end }}
{{- end }}

{{/* PromQL matcher of a pool's series in the gateway's per-model gauges. */}}
{{- define "vlq.prometheus.modelMatcher" -}}
{{- printf "model=%q" .servedModelName }}
{{- end }}

{{/*
Jobs a pool holds: its model's queued plus started jobs. Every gateway replica exports the same gauges, hence
max. Call with (dict "ctx" $ "pool" $p).
*/}}
{{- define "vlq.prometheus.jobsQuery" -}}
{{- $m := printf "%s,%s" (include "vlq.prometheus.gatewayMatchers" .ctx) (include "vlq.prometheus.modelMatcher" .pool) }}
{{- printf "max(vlq_queue_depth{%s}) + max(vlq_queue_started_jobs{%s})" $m $m }}
{{- end }}

{{/* ---- Cross-value checks the JSON schema cannot express ---------------------------------------------- */}}

{{- define "vlq.validate" -}}
{{- $errors := list }}
{{- $mode := .Values.autoscaling.mode }}
{{- $pools := include "vlq.workerPools" . | fromJsonArray }}
{{- $names := list }}
{{- $served := list }}
{{- $c := .Values.gateway.config }}
{{- $rule := .Values.monitoring.prometheusRule }}
{{- range $p := $pools }}
{{- if has $p.name $names }}
{{- $errors = append $errors (printf "workerPools: the name %q is used twice; each pool needs its own (its objects are named after it)" $p.name) }}
{{- end }}
{{- $names = append $names $p.name }}
{{- if has $p.servedModelName $served }}
{{- $errors = append $errors (printf "workerPools: the served model name %q is used by two pools; each model has one pool (and one queue); give one of them another servedModelName" $p.servedModelName) }}
{{- end }}
{{- $served = append $served $p.servedModelName }}
{{- if not (regexMatch "^[A-Za-z0-9][A-Za-z0-9._/-]*$" $p.servedModelName) }}
{{- $errors = append $errors (printf "workerPools[%s]: the served model name %q may hold only letters, digits and . _ / - (no ':', which separates an adapter: base:adapter); set servedModelName" $p.name $p.servedModelName) }}
{{- end }}
{{- $a := $p.autoscaling }}
{{- if gt (int $a.minReplicas) (int $a.maxReplicas) }}
{{- $errors = append $errors (printf "%s (%v) must not exceed %s (%v)" (include "vlq.pool.valuePath" (dict "pool" $p "path" "autoscaling.minReplicas" "global" "autoscaling.minReplicas")) $a.minReplicas (include "vlq.pool.valuePath" (dict "pool" $p "path" "autoscaling.maxReplicas" "global" "autoscaling.maxReplicas")) $a.maxReplicas) }}
{{- end }}
{{- if and $a.scaleToZero (ne $mode "keda") }}
{{- $errors = append $errors (printf "%s needs autoscaling.mode=keda (a plain HPA cannot scale to zero); mode is %q" (include "vlq.pool.valuePath" (dict "pool" $p "path" "autoscaling.scaleToZero" "global" "autoscaling.scaleToZero")) $mode) }}
{{- end }}
{{- if lt (int $p.engine.limitMmImages) (int $c.maxImages) }}
{{- $errors = append $errors (printf "%s (%v) must be at least gateway.config.maxImages (%v), or the engine rejects requests the gateway accepted" (include "vlq.pool.valuePath" (dict "pool" $p "path" "engine.limitMmImages" "global" "worker.engine.limitMmImages")) $p.engine.limitMmImages $c.maxImages) }}
{{- end }}
{{- $gpuAlert := $p.alerts.gpuMemory }}
{{- if and $rule.enabled $gpuAlert.enabled (le (float64 $gpuAlert.ratio) (float64 $p.engine.gpuMemoryUtilization)) }}
{{- $errors = append $errors (printf "%s (%v) must be above %s (%v): vLLM claims that share up front, so the alert would always fire" (include "vlq.pool.valuePath" (dict "pool" $p "path" "alerts.gpuMemory.ratio" "global" "monitoring.prometheusRule.alerts.gpuMemory.ratio")) $gpuAlert.ratio (include "vlq.pool.valuePath" (dict "pool" $p "path" "engine.gpuMemoryUtilization" "global" "worker.engine.gpuMemoryUtilization")) $p.engine.gpuMemoryUtilization) }}
{{- end }}
{{- end }}
{{- with .Values.gateway.defaultModel }}
{{- if not (has . $served) }}
{{- $errors = append $errors (printf "gateway.defaultModel %q is served by no pool (served: %s)" . (join ", " $served)) }}
{{- end }}
{{- end }}
{{- if and (not .Values.redis.enabled) (not .Values.externalRedis.host) }}
{{- $errors = append $errors "redis.enabled=false needs externalRedis.host (and externalRedis.existingSecret or externalRedis.password when it requires AUTH)" }}
{{- end }}
{{- $auth := .Values.auth }}
{{- if and $auth.enabled (not $auth.tenants) (not $auth.existingSecret) }}
{{- $errors = append $errors "auth.enabled is true but no API keys are given: the gateway refuses to start without them. Make a key with `python -m gateway.auth new` (it prints the key, for the client, and its hash), then set auth.tenants (e.g. --set-json 'auth.tenants={\"acme\":[\"sha256:<hex>\"]}') or auth.existingSecret (a Secret whose key auth.existingSecretKey holds that JSON). To run with no keys at all, set auth.enabled=false explicitly." }}
{{- end }}
{{- if and $auth.tenants $auth.existingSecret }}
{{- $errors = append $errors (printf "set auth.tenants or auth.existingSecret (%q), not both: the gateway reads one key file" $auth.existingSecret) }}
{{- end }}
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
{{- if $errors }}
{{- $message := printf "invalid values:\n- %s" (join "\n- " (uniq $errors)) }}
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

{{/* ---- Worker pool objects shared by all pools --------------------------------------------------------- */}}

{{/* The model cache claim the chart creates, shared by every pool that uses it. */}}
{{- define "vlq.worker.modelsClaim" -}}{{ include "vlq.worker.fullname" . }}-models{{- end }}

{{/* "true" when some pool is scaled by KEDA's redis trigger (KEDA then reads Redis itself). */}}
{{- define "vlq.keda.redisTriggered" -}}
{{- if eq .Values.autoscaling.mode "keda" }}
{{- range $p := include "vlq.workerPools" . | fromJsonArray }}
{{- if eq $p.autoscaling.keda.trigger "redis" }}true{{ break }}{{ end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The TriggerAuthentication every redis trigger uses (it names only the Redis password Secret). */}}
{{- define "vlq.keda.redisAuthName" -}}{{ include "vlq.worker.fullname" . }}-redis{{- end }}
