{{/* Names and labels. */}}
{{- define "tailsift.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tailsift.fullname" -}}
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

{{- define "tailsift.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tailsift.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tailsift.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tailsift.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "tailsift.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tailsift.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tailsift.workloadKind" -}}
{{- if .Values.staticMembership.enabled -}}StatefulSet{{- else -}}Deployment{{- end -}}
{{- end -}}

{{- define "tailsift.rulesConfigMap" -}}
{{- default (printf "%s-rules" (include "tailsift.fullname" .)) .Values.rules.existingConfigMap -}}
{{- end -}}

{{/*
A Kubernetes memory quantity ("1Gi", "512Mi", "1.5G", 1073741824) in bytes, as a decimal string.
Fails on what it cannot read rather than guessing.
*/}}
{{- define "tailsift.quantityBytes" -}}
{{- if or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) -}}
{{- printf "%d" (int64 .) -}}
{{- else -}}
{{- $q := toString . -}}
{{- $num := regexFind "^[0-9]+(\\.[0-9]+)?" $q -}}
{{- $suffix := trimPrefix $num $q -}}
{{- $scale := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 -}}
{{- if or (not $num) (not (hasKey $scale $suffix)) -}}
{{- fail (printf "resources.limits.memory: cannot read %q as bytes (write e.g. 1Gi, 512Mi, 2G)" $q) -}}
{{- end -}}
{{- printf "%d" (int64 (mulf (float64 $num) (get $scale $suffix))) -}}
{{- end -}}
{{- end -}}

{{/* A tailsift size ("64MiB", "2GB", 1048576) in bytes, as a decimal string; `what` names it in errors. */}}
{{- define "tailsift.byteSize" -}}
{{- $v := .value -}}
{{- if or (kindIs "float64" $v) (kindIs "int" $v) (kindIs "int64" $v) -}}
{{- printf "%d" (int64 $v) -}}
{{- else -}}
{{- $s := trim (toString $v) -}}
{{- $num := regexFind "^[0-9]+" $s -}}
{{- $unit := trim (trimPrefix $num $s) -}}
{{- $scale := dict "" 1 "B" 1 "KiB" 1024 "MiB" 1048576 "GiB" 1073741824 "KB" 1000 "MB" 1000000 "GB" 1000000000 -}}
{{- if or (not $num) (not (hasKey $scale $unit)) -}}
{{- fail (printf "%s: cannot read %q as a size (write e.g. 64MiB, 2GB or a number of bytes)" .what $s) -}}
{{- end -}}
{{- printf "%d" (mul (int64 $num) (int64 (get $scale $unit))) -}}
{{- end -}}
{{- end -}}

{{- define "tailsift.memoryLimitBytes" -}}
{{- $limits := (.Values.resources).limits | default dict -}}
{{- if not $limits.memory -}}
{{- fail "resources.limits.memory is required: the buffer budget (buffer.max_bytes) is derived from it" -}}
{{- end -}}
{{- include "tailsift.quantityBytes" $limits.memory -}}
{{- end -}}

{{/* Replica ceiling: autoscaling.maxReplicas, or inputPartitions when 0. */}}
{{- define "tailsift.maxReplicas" -}}
{{- $max := int64 .Values.autoscaling.maxReplicas -}}
{{- if eq $max 0 -}}{{- $max = int64 .Values.inputPartitions -}}{{- end -}}
{{- printf "%d" $max -}}
{{- end -}}

{{- define "tailsift.terminationGracePeriodSeconds" -}}
{{- $shutdown := int64 .Values.shutdownTimeoutSeconds -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- printf "%d" (add $shutdown 15) -}}
{{- else -}}
{{- printf "%d" (int64 .Values.terminationGracePeriodSeconds) -}}
{{- end -}}
{{- end -}}

{{/*
The rendered tailsift.yaml: config with the chart-managed keys filled in. Every consistency
check between values runs here, so that a render that cannot work fails with a message naming
the value.
*/}}
{{- define "tailsift.config" -}}
{{- $cfg := mustDeepCopy .Values.config -}}
{{- $kafka := $cfg.kafka -}}
{{- range $key := list "properties" "consumer_properties" "producer_properties" -}}
{{- if not (hasKey $kafka $key) -}}{{- $_ := set $kafka $key dict -}}{{- end -}}
{{- if kindIs "invalid" (get $kafka $key) -}}{{- $_ := set $kafka $key dict -}}{{- end -}}
{{- end -}}

{{- /* Memory: the buffer budget and librdkafka's queues, all from the memory limit. */ -}}
{{- $limit := int64 (include "tailsift.memoryLimitBytes" .) -}}
{{- $buffer := div (mul $limit (int64 .Values.buffer.memoryLimitPercent)) 100 -}}
{{- if lt $buffer 1048576 -}}
{{- fail (printf "buffer.memoryLimitPercent: %d%% of resources.limits.memory is %d bytes; tailsift needs a buffer of at least 1MiB" (int64 .Values.buffer.memoryLimitPercent) $buffer) -}}
{{- end -}}
{{- /* librdkafka's queues: tailsift sizes each at an eighth of the budget, between 1MiB and
64MiB (the producer's at least two output messages + 1MiB), unless the properties set them. */ -}}
{{- $queue := max 1048576 (min 67108864 (div $buffer 8)) -}}
{{- $maxMessage := int64 ($kafka.max_message_bytes | default 1000000) -}}
{{- $consumerQueue := $queue -}}
{{- $producerQueue := max $queue (add (mul 2 $maxMessage) 1048576) -}}
{{- if hasKey $kafka.consumer_properties "queued.max.messages.kbytes" -}}
{{- $consumerQueue = mul (int64 (get $kafka.consumer_properties "queued.max.messages.kbytes")) 1024 -}}
{{- end -}}
{{- if hasKey $kafka.producer_properties "queue.buffering.max.kbytes" -}}
{{- $producerQueue = mul (int64 (get $kafka.producer_properties "queue.buffering.max.kbytes")) 1024 -}}
{{- end -}}
{{- /* tailsift's default for decision_cache.max_bytes is 64MiB. */ -}}
{{- $cache := int64 (include "tailsift.byteSize" (dict "value" ((($cfg.decision_cache | default dict).max_bytes) | default "64MiB") "what" "config.decision_cache.max_bytes")) -}}
{{- $committed := add $buffer $consumerQueue $producerQueue $cache -}}
{{- if gt (mul $committed 10) (mul $limit 9) -}}
{{- fail (printf "memory: buffer (%d bytes) + consumer queue (%d bytes) + producer queue (%d bytes) + decision cache (%d bytes) exceed 90%% of resources.limits.memory (%d bytes); lower buffer.memoryLimitPercent, the queue properties or decision_cache.max_bytes, or raise the limit" $buffer $consumerQueue $producerQueue $cache $limit) -}}
{{- end -}}
{{- with ($cfg.completion | default dict).max_trace_bytes -}}
{{- $traceMax := int64 (include "tailsift.byteSize" (dict "value" . "what" "config.completion.max_trace_bytes")) -}}
{{- if gt (mul $traceMax 2) $buffer -}}
{{- fail (printf "config.completion.max_trace_bytes (%d bytes) is above half the buffer budget (%d bytes, buffer.memoryLimitPercent of the memory limit): one trace could fill half the buffer; lower it or raise the limit" $traceMax $buffer) -}}
{{- end -}}
{{- end -}}
{{- $bufferCfg := $cfg.buffer | default dict -}}
{{- $_ := set $bufferCfg "max_bytes" $buffer -}}
{{- $_ := set $cfg "buffer" $bufferCfg -}}

{{- /* Static membership: the id comes from the pod name (TAILSIFT_GROUP_INSTANCE_ID). */ -}}
{{- if .Values.staticMembership.enabled -}}
{{- if not (hasKey $kafka.consumer_properties "session.timeout.ms") -}}
{{- $_ := set $kafka.consumer_properties "session.timeout.ms" (printf "%d" (int64 .Values.staticMembership.sessionTimeoutMs)) -}}
{{- end -}}
{{- end -}}

{{- /* Secrets: every ${env:NAME} must come from secretEnv or extraEnv, every ${file:PATH} from secretFiles. */ -}}
{{- $envNames := list -}}
{{- range .Values.secretEnv -}}{{- $envNames = append $envNames .name -}}{{- end -}}
{{- range .Values.extraEnv -}}{{- $envNames = append $envNames .name -}}{{- end -}}
{{- $mounts := list -}}
{{- range .Values.secretFiles -}}{{- $mounts = append $mounts (trimSuffix "/" .mountPath) -}}{{- end -}}
{{- range $map := list "properties" "consumer_properties" "producer_properties" -}}
{{- range $key, $value := get $kafka $map -}}
{{- $v := toString $value -}}
{{- if hasPrefix "${env:" $v -}}
{{- $name := trimSuffix "}" (trimPrefix "${env:" $v) -}}
{{- if not (has $name $envNames) -}}
{{- fail (printf "config.kafka.%s.%s refers to ${env:%s}, which neither secretEnv nor extraEnv defines" $map $key $name) -}}
{{- end -}}
{{- else if hasPrefix "${file:" $v -}}
{{- $path := trimSuffix "}" (trimPrefix "${file:" $v) -}}
{{- $found := false -}}
{{- range $mounts -}}{{- if hasPrefix (printf "%s/" .) $path -}}{{- $found = true -}}{{- end -}}{{- end -}}
{{- if not $found -}}
{{- fail (printf "config.kafka.%s.%s refers to ${file:%s}, which is under no secretFiles mountPath" $map $key $path) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- /* Chart-managed keys. */ -}}
{{- $rules := $cfg.rules | default dict -}}
{{- $_ := set $rules "dir" .Values.rules.mountPath -}}
{{- $_ := set $cfg "rules" $rules -}}
{{- $_ := set $cfg "http" (dict "listen" (printf "0.0.0.0:%d" (int64 .Values.service.port))) -}}
{{- $_ := set $cfg "shutdown_timeout" (printf "%ds" (int64 .Values.shutdownTimeoutSeconds)) -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* Checks across values that the schema cannot express; included by the workload. */}}
{{- define "tailsift.validate" -}}
{{- $partitions := int64 .Values.inputPartitions -}}
{{- if .Values.autoscaling.enabled -}}
{{- $max := int64 (include "tailsift.maxReplicas" .) -}}
{{- if gt $max $partitions -}}
{{- fail (printf "autoscaling.maxReplicas (%d) is above inputPartitions (%d): instances beyond the partition count get no partition, do no work and never become ready" $max $partitions) -}}
{{- end -}}
{{- if gt (int64 .Values.autoscaling.minReplicas) $max -}}
{{- fail (printf "autoscaling.minReplicas (%d) is above the replica ceiling (%d)" (int64 .Values.autoscaling.minReplicas) $max) -}}
{{- end -}}
{{- else if gt (int64 .Values.replicaCount) $partitions -}}
{{- fail (printf "replicaCount (%d) is above inputPartitions (%d): instances beyond the partition count get no partition, do no work and never become ready" (int64 .Values.replicaCount) $partitions) -}}
{{- end -}}
{{- $shutdown := int64 .Values.shutdownTimeoutSeconds -}}
{{- $grace := int64 (include "tailsift.terminationGracePeriodSeconds" .) -}}
{{- if le $grace (add $shutdown 5) -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed shutdownTimeoutSeconds + 5 (%d): tailsift may take that long to commit and leave the group before Kubernetes kills it" $grace (add $shutdown 5)) -}}
{{- end -}}
{{- if and .Values.rules.existingConfigMap (gt (len .Values.rules.files) 0) -}}
{{- fail "rules.files and rules.existingConfigMap are exclusive: the pods mount one ConfigMap" -}}
{{- end -}}
{{- end -}}
