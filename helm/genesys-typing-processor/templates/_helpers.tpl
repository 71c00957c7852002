{{/*
Names. Kubernetes names and label values are at most 63 characters: every name is cut to
fit, component names keep their suffix whole (the release part is cut instead).
*/}}
{{- define "gtp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gtp.fullname" -}}
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

{{/* "<fullname>-<suffix>" within 63 characters: (dict "ctx" $ "suffix" "crm-webhook") */}}
{{- define "gtp.componentName" -}}
{{- $base := include "gtp.fullname" .ctx | trunc (int (sub 62 (len .suffix))) | trimSuffix "-" -}}
{{- printf "%s-%s" $base .suffix -}}
{{- end -}}

{{/*
Name of an object that values may send to another namespace (ServiceMonitor,
PrometheusRule, dashboard ConfigMap): (dict "ctx" $ "namespace" $sm.namespace "suffix" "")
In the release's own namespace it is the usual name (<fullname>, or <fullname>-<suffix>).
Elsewhere, typically one central monitoring namespace shared by many releases, it also
names the release's namespace, <fullname>-<release namespace>[-<suffix>], so that the same
release name in two namespaces gives two objects there; cut to 63 characters, the cut part
gives way to a hash of the whole, which keeps names apart that the cut would make equal.
*/}}
{{- define "gtp.monitoringName" -}}
{{- $ctx := .ctx -}}
{{- $suffix := .suffix | default "" -}}
{{- if eq (.namespace | default $ctx.Release.Namespace) $ctx.Release.Namespace -}}
{{- if $suffix -}}
{{- include "gtp.componentName" (dict "ctx" $ctx "suffix" $suffix) -}}
{{- else -}}
{{- include "gtp.fullname" $ctx -}}
{{- end -}}
{{- else -}}
{{- $base := printf "%s-%s" (include "gtp.fullname" $ctx) $ctx.Release.Namespace -}}
{{- $tail := ternary (printf "-%s" $suffix) "" (ne $suffix "") -}}
{{- if gt (add (len $base) (len $tail)) 63 -}}
{{- $hash := printf "%s/%s" $ctx.Release.Namespace (include "gtp.fullname" $ctx) | sha256sum | trunc 8 -}}
{{- $base = printf "%s-%s" ($base | trunc (int (sub 54 (len $tail))) | trimSuffix "-") $hash -}}
{{- end -}}
{{- printf "%s%s" $base $tail -}}
{{- end -}}
{{- end -}}

{{/*
The dashboard's Grafana uid, at most 40 characters of [A-Za-z0-9_-]: grafanaDashboard.uid,
or the release's namespace and full name cut to 31 characters and a hash of the two, which
keeps releases apart that the cut, or a dash moved from one name to the other, would make
equal. Grafana keeps one dashboard per uid: releases sharing one would show one of them.
*/}}
{{- define "gtp.dashboardUid" -}}
{{- if .Values.grafanaDashboard.uid -}}
{{- .Values.grafanaDashboard.uid -}}
{{- else -}}
{{- $fullname := include "gtp.fullname" . -}}
{{- $base := regexReplaceAll "[^A-Za-z0-9_-]" (printf "%s-%s" .Release.Namespace $fullname) "-" | trunc 31 | trimSuffix "-" -}}
{{- printf "%s-%s" $base (printf "%s/%s" .Release.Namespace $fullname | sha256sum | trunc 8) -}}
{{- end -}}
{{- end -}}

{{- define "gtp.webhookName" -}}
{{- include "gtp.componentName" (dict "ctx" . "suffix" "crm-webhook") -}}
{{- end -}}

{{- define "gtp.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Labels every object carries: the standard labels, then commonLabels, then the object's own
(`extra`, e.g. serviceMonitor.additionalLabels, named `from` in errors), each key once, the
later winning: (dict "ctx" $ "extra" $sm.additionalLabels "from" "serviceMonitor.additionalLabels")
The labels that select the pods or tell Helm and tools what they look at (name, instance,
component, version, managed-by, helm.sh/chart) are the chart's: another value for one of them
is refused. app.kubernetes.io/part-of (the chart's name by default) may be set.
*/}}
{{- define "gtp.labelsWith" -}}
{{- $ctx := .ctx -}}
{{- $labels := dict
  "helm.sh/chart" (include "gtp.chart" $ctx)
  "app.kubernetes.io/name" (include "gtp.name" $ctx)
  "app.kubernetes.io/instance" $ctx.Release.Name
  "app.kubernetes.io/version" ($ctx.Values.image.tag | default $ctx.Chart.AppVersion | toString | trunc 63 | trimSuffix "-")
  "app.kubernetes.io/managed-by" $ctx.Release.Service
  "app.kubernetes.io/part-of" (include "gtp.name" $ctx) -}}
{{- $reserved := append (without (keys $labels) "app.kubernetes.io/part-of") "app.kubernetes.io/component" -}}
{{- range $source := list (list "commonLabels" $ctx.Values.commonLabels) (list .from .extra) }}
{{- $name := index $source 0 }}
{{- range $key, $_ := index $source 1 }}
{{- if has $key $reserved }}
{{- fail (printf "%s sets %s, which the chart sets itself (selectors, Helm's ownership checks and the dashboards rely on its value): drop it (nameOverride and fullnameOverride change the names; app.kubernetes.io/part-of may be set)" $name $key) }}
{{- end }}
{{- end }}
{{- $labels = mergeOverwrite $labels (index $source 1 | default dict) }}
{{- end }}
{{- toYaml $labels }}
{{- end -}}

{{- define "gtp.labels" -}}
{{- include "gtp.labelsWith" (dict "ctx" . "extra" dict "from" "") -}}
{{- end -}}

{{/* Labels of the release's pods and services, whatever their component. */}}
{{- define "gtp.releaseSelector" -}}
app.kubernetes.io/name: {{ include "gtp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Selector of one component: (dict "ctx" $ "component" "processor") */}}
{{- define "gtp.selector" -}}
{{ include "gtp.releaseSelector" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "gtp.componentLabels" -}}
{{ include "gtp.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* A component's pod labels: every object's labels (commonLabels too, for policy engines
and cost allocation), then podLabels; the selector's keys always win. */}}
{{- define "gtp.podLabels" -}}
{{- $labels := fromYaml (include "gtp.componentLabels" .) -}}
{{- $labels = merge (fromYaml (include "gtp.selector" .)) (.ctx.Values.podLabels | default dict) $labels -}}
{{- toYaml $labels -}}
{{- end -}}

{{- define "gtp.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "gtp.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The Secret the pods read: the chart's own when credentials are given in values, otherwise
secrets.existingSecret (values.schema.json refuses neither).
*/}}
{{- define "gtp.createSecret" -}}
{{- if or .Values.secrets.oauthClientId .Values.secrets.oauthClientSecret -}}true{{- end -}}
{{- end -}}

{{- define "gtp.secretName" -}}
{{- if include "gtp.createSecret" . -}}
{{- include "gtp.fullname" . -}}
{{- else -}}
{{- .Values.secrets.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "gtp.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "gtp.saslEnabled" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol -}}true{{- end -}}
{{- end -}}

{{- define "gtp.tlsEnabled" -}}
{{- if has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL") -}}true{{- end -}}
{{- end -}}

{{/*
Pod-level settings both Deployments share: service account, security context, scheduling.
Topology spread constraints without a labelSelector get the component's own selector.
(dict "ctx" $ "component" "processor")
*/}}
{{- define "gtp.podCommon" -}}
{{- $ctx := .ctx -}}
serviceAccountName: {{ include "gtp.serviceAccountName" $ctx }}
automountServiceAccountToken: {{ $ctx.Values.serviceAccount.automountServiceAccountToken }}
{{- with $ctx.Values.imagePullSecrets }}
imagePullSecrets: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $ctx.Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
securityContext: {{- toYaml $ctx.Values.podSecurityContext | nindent 2 }}
{{- with $ctx.Values.topologySpreadConstraints }}
topologySpreadConstraints:
{{- range . }}
{{- /* a copy: writing into .Values would leave this component's labels to the next */}}
{{- $item := deepCopy . }}
{{- if not $item.labelSelector }}
{{- $_ := set $item "labelSelector" (dict "matchLabels" (include "gtp.selector" (dict "ctx" $ctx "component" $.component) | fromYaml)) }}
{{- end }}
  - {{ toYaml $item | indent 4 | trim }}
{{- end }}
{{- end }}
{{- with $ctx.Values.nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $ctx.Values.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $ctx.Values.affinity }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* KEDA's least replica count: keda.minReplicaCount (default replicaCount), never below
one (clears of shown indicators must go out even when no input lags). */}}
{{- define "gtp.kedaMinReplicas" -}}
{{- max 1 (.Values.keda.minReplicaCount | default .Values.replicaCount | int) -}}
{{- end -}}

{{/* PromQL matchers of one component's series as the ServiceMonitor scrapes them. */}}
{{- define "gtp.promSelector" -}}
namespace="{{ .ctx.Release.Namespace }}", job="{{ .job }}"
{{- end -}}

{{/* Roll the pods when the settings or the credentials change. */}}
{{- define "gtp.checksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ print (include "gtp.secretName" .) (include (print .Template.BasePath "/secret.yaml") .) | sha256sum }}
{{- end -}}

{{/*
/tmp (the root filesystem is read-only), the Kafka CA, and extraVolumes. The CA is mounted
by its key (`items`): a Secret without that key holds the pod in ContainerCreating with an
event naming the Secret and the key, where a whole-Secret mount would start the pod and
the processor would stop on a missing file.
*/}}
{{- define "gtp.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if .Values.kafka.caSecretName }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.caSecretName }}
    items:
      - key: {{ .Values.kafka.caSecretKey | quote }}
        path: {{ .Values.kafka.caSecretKey | quote }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "gtp.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.kafka.caSecretName }}
- name: kafka-ca
  mountPath: /etc/kafka-ca
  readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
The CRM webhook worker's TLS files (crmWebhook.tls), mounted by their keys as the Kafka CA
is: a Secret without a key holds the pod in ContainerCreating with an event naming it.
*/}}
{{- define "gtp.webhookTlsVolumes" -}}
{{- with .Values.crmWebhook.tls }}
{{- if .caSecretName }}
- name: crm-webhook-ca
  secret:
    secretName: {{ .caSecretName }}
    items:
      - key: {{ .caSecretKey | quote }}
        path: {{ .caSecretKey | quote }}
{{- end }}
{{- if .clientSecretName }}
- name: crm-webhook-client
  secret:
    secretName: {{ .clientSecretName }}
    items:
      - key: {{ .clientCertSecretKey | quote }}
        path: {{ .clientCertSecretKey | quote }}
      - key: {{ .clientKeySecretKey | quote }}
        path: {{ .clientKeySecretKey | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "gtp.webhookTlsVolumeMounts" -}}
{{- with .Values.crmWebhook.tls }}
{{- if .caSecretName }}
- name: crm-webhook-ca
  mountPath: /etc/crm-webhook-ca
  readOnly: true
{{- end }}
{{- if .clientSecretName }}
- name: crm-webhook-client
  mountPath: /etc/crm-webhook-client
  readOnly: true
{{- end }}
{{- end }}
{{- end -}}

{{/* Pod identity for OpenTelemetry resources (k8s.pod.name, k8s.namespace.name). */}}
{{- define "gtp.podEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ printf "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE)%s" (ternary (printf ",%s" .Values.otel.resourceAttributes) "" (ne .Values.otel.resourceAttributes "")) | quote }}
{{- end -}}

{{/* The CRM webhook worker's own env: pod identity, its service name, the CRM URL and its
Authorization header from the Secret, and the Kafka login (it reads no Secret through
envFrom). */}}
{{- define "gtp.webhookEnv" -}}
{{- include "gtp.podEnv" . }}
- name: OTEL_SERVICE_NAME
  value: {{ .Values.crmWebhook.otelServiceName | quote }}
{{- with .Values.crmWebhook.urlSecretKey }}
{{- if include "gtp.createSecret" $ }}
{{- fail "crmWebhook.urlSecretKey names a key of secrets.existingSecret, which is not set" }}
{{- end }}
- name: TYPING_CRM_WEBHOOK_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "gtp.secretName" $ }}
      key: {{ . }}
{{- end }}
{{- /* the Authorization header: the chart's Secret holds it under its variable's name, an
existing Secret under authorizationSecretKey */}}
{{- $authorizationKey := .Values.crmWebhook.authorizationSecretKey }}
{{- if and $authorizationKey (include "gtp.createSecret" .) }}
{{- fail "crmWebhook.authorizationSecretKey names a key of secrets.existingSecret, which is not set: with the chart's own Secret, set secrets.crmWebhookAuthorization" }}
{{- end }}
{{- if .Values.secrets.crmWebhookAuthorization }}
{{- $authorizationKey = "TYPING_CRM_WEBHOOK_AUTHORIZATION" }}
{{- end }}
{{- with $authorizationKey }}
- name: TYPING_CRM_WEBHOOK_AUTHORIZATION
  valueFrom:
    secretKeyRef:
      name: {{ include "gtp.secretName" $ }}
      key: {{ . }}
{{- end }}
{{- /* the TLS files, where gtp.webhookTlsVolumeMounts puts them: in the worker's env,
not the ConfigMap, since `run` (which mounts none of them) would check them too */}}
{{- with .Values.crmWebhook.tls }}
{{- if .caSecretName }}
- name: TYPING_CRM_WEBHOOK_CA_FILE
  value: {{ printf "/etc/crm-webhook-ca/%s" .caSecretKey | quote }}
{{- end }}
{{- if .clientSecretName }}
- name: TYPING_CRM_WEBHOOK_CLIENT_CERT_FILE
  value: {{ printf "/etc/crm-webhook-client/%s" .clientCertSecretKey | quote }}
- name: TYPING_CRM_WEBHOOK_CLIENT_KEY_FILE
  value: {{ printf "/etc/crm-webhook-client/%s" .clientKeySecretKey | quote }}
{{- end }}
{{- end }}
{{- if include "gtp.saslEnabled" . }}
{{- if not .Values.kafka.saslUsername }}
# the user is in the existing Secret, as the processor reads it
- name: KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ include "gtp.secretName" . }}
      key: KAFKA_SASL_USERNAME
{{- end }}
- name: KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "gtp.secretName" . }}
      key: KAFKA_SASL_PASSWORD
{{- end }}
{{- end -}}

{{/* The HTTP probes of both workers (timings from values). */}}
{{- define "gtp.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  {{- toYaml .Values.livenessProbe | nindent 2 }}
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  {{- toYaml .Values.readinessProbe | nindent 2 }}
{{- end -}}

{{/*
An extra env entry named like a variable the chart sets in that container would replace
the chart's value in silence (Kubernetes keeps the later of two entries, and `env` wins
over `envFrom`): the consumer group KEDA scales on, a topic checked above, the pod's
identity. Refused, naming the value to set instead; an entry given twice is refused too.
Keys of secrets.existingSecret are not known here and stay open.
(dict "ctx" $ "from" "extraEnv" "entries" $list "own" $chartEnvEntries "hints" (dict name hint))
*/}}
{{- define "gtp.checkExtraEnv" -}}
{{- $ctx := .ctx -}}
{{- $values := dict
  "KAFKA_BOOTSTRAP_SERVERS" "kafka.bootstrapServers"
  "KAFKA_SECURITY_PROTOCOL" "kafka.securityProtocol"
  "KAFKA_SASL_MECHANISM" "kafka.saslMechanism"
  "KAFKA_SASL_USERNAME" "kafka.saslUsername (or KAFKA_SASL_USERNAME in secrets.existingSecret)"
  "KAFKA_SASL_PASSWORD" "secrets.kafkaSaslPassword (or KAFKA_SASL_PASSWORD in secrets.existingSecret)"
  "KAFKA_SSL_CAFILE" "kafka.caSecretName and kafka.caSecretKey"
  "KAFKA_ENABLE_IDEMPOTENCE" "kafka.enableIdempotence"
  "KAFKA_ISOLATION_LEVEL" "kafka.isolationLevel"
  "KAFKA_CLIENT_ID" "kafka.clientId"
  "GENESYSCLOUD_REGION" "genesys.region"
  "GENESYSCLOUD_API_URL" "genesys.apiUrl"
  "GENESYSCLOUD_LOGIN_URL" "genesys.loginUrl"
  "GENESYSCLOUD_OAUTH_SCOPES" "genesys.oauthScopes"
  "GENESYSCLOUD_OAUTHCLIENT_ID" "secrets.oauthClientId"
  "GENESYSCLOUD_OAUTHCLIENT_SECRET" "secrets.oauthClientSecret"
  "TYPING_GROUP_ID" "typing.groupId"
  "TYPING_INPUT_TOPIC" "typing.inputTopic"
  "TYPING_CRM_TOPIC" "typing.crmTopic"
  "TYPING_AUDIT_TOPIC" "typing.auditTopic"
  "TYPING_DLQ_TOPIC" "typing.dlqTopic"
  "TYPING_CHANGELOG_TOPIC" "typing.changelogTopic"
  "TYPING_SUPPRESSION_WINDOW_MS" "typing.suppressionWindowMs"
  "TYPING_TIMEOUT_MATRIX" "typing.timeoutMatrix"
  "TYPING_API_RATE_PER_MINUTE" "typing.apiRatePerMinute"
  "TYPING_CREATE_TOPICS" "typing.createTopics"
  "TYPING_TOPIC_PARTITIONS" "typing.topicPartitions"
  "TYPING_TOPIC_REPLICATION_FACTOR" "typing.topicReplicationFactor"
  "TYPING_MAX_IN_FLIGHT" "typing.maxInFlight"
  "TYPING_FETCH_MAX_WAIT_MS" "typing.fetchMaxWaitMs"
  "TYPING_COMMIT_INTERVAL_MS" "typing.commitIntervalMs"
  "TYPING_MESSAGING_MAX_DURATION_MS" "typing.messagingMaxDurationMs"
  "TYPING_AUDIT_LOG_FILE" "typing.auditLogFile"
  "TYPING_LOG_LEVEL" "typing.logLevel"
  "TYPING_HTTP_PORT" "httpPort"
  "TYPING_CRM_WEBHOOK_URL" "crmWebhook.url (or crmWebhook.urlSecretKey)"
  "TYPING_CRM_WEBHOOK_AUTHORIZATION" "secrets.crmWebhookAuthorization (or crmWebhook.authorizationSecretKey)"
  "TYPING_CRM_WEBHOOK_CA_FILE" "crmWebhook.tls.caSecretName and crmWebhook.tls.caSecretKey"
  "TYPING_CRM_WEBHOOK_CLIENT_CERT_FILE" "crmWebhook.tls.clientSecretName and crmWebhook.tls.clientCertSecretKey"
  "TYPING_CRM_WEBHOOK_CLIENT_KEY_FILE" "crmWebhook.tls.clientSecretName and crmWebhook.tls.clientKeySecretKey"
  "OTEL_SERVICE_NAME" "otel.serviceName"
  "OTEL_EXPORTER_OTLP_ENDPOINT" "otel.exporterOtlpEndpoint"
  "OTEL_TRACES_SAMPLER" "otel.tracesSampler"
  "OTEL_TRACES_SAMPLER_ARG" "otel.tracesSamplerArg"
  "OTEL_RESOURCE_ATTRIBUTES" "otel.resourceAttributes" -}}
{{- $hints := dict
  "POD_NAME" "it is the pod's own name (for OTEL_RESOURCE_ATTRIBUTES): give yours another name"
  "POD_NAMESPACE" "it is the pod's own namespace (for OTEL_RESOURCE_ATTRIBUTES): give yours another name" -}}
{{- range $name, $value := $values }}
{{- $_ := set $hints $name (printf "set %s instead" $value) }}
{{- end }}
{{- $hints = mergeOverwrite $hints (.hints | default dict) -}}
{{- $set := dict -}}
{{- range .own }}
{{- $_ := set $set .name true }}
{{- end }}
{{- $config := include (print $ctx.Template.BasePath "/configmap.yaml") $ctx | fromYaml -}}
{{- range $name, $_ := $config.data }}
{{- $_ := set $set $name true }}
{{- end }}
{{- if .secret }}
{{- $secret := include (print $ctx.Template.BasePath "/secret.yaml") $ctx | fromYaml -}}
{{- range $name, $_ := ($secret.stringData | default dict) }}
{{- $_ := set $set $name true }}
{{- end }}
{{- end }}
{{- $seen := dict -}}
{{- range .entries }}
{{- if hasKey $set .name }}
{{- fail (printf "%s sets %s, which the chart sets itself (Kubernetes would keep one of the two in silence): %s" $.from .name (get $hints .name | default "drop it")) }}
{{- end }}
{{- if hasKey $seen .name }}
{{- fail (printf "%s sets %s twice (Kubernetes would keep the last in silence): keep one" $.from .name) }}
{{- end }}
{{- $_ := set $seen .name true }}
{{- end }}
{{- end -}}
