{{/*
Helpers of the tollgate chart.

The public ones, for a parent chart that depends on this one:
  tollgate.sidecar                          the tollgate container (one list item)
  tollgate.volumes                          the pod volumes it needs (list items)
  tollgate.socketVolumeMount                the socket volume mount for the app container
  tollgate.terminationGracePeriodSeconds    the pod grace period tollgate needs
Each takes the parent's context `.` (the dependency must be named "tollgate"),
or (dict "context" . "subchart" "<alias>") for an aliased dependency, or this
chart's own context. Whichever it is, they read this chart's values.
*/}}

{{/*
tollgate.scope: resolves the argument of a public helper to the context of
this chart. Called as (list <argument> <dict>); sets "ctx" in the dict.
*/}}
{{- define "tollgate.scope" -}}
{{- $in := index . 0 -}}
{{- $out := index . 1 -}}
{{- $root := $in -}}
{{- $subchart := "tollgate" -}}
{{- if hasKey $in "context" -}}
{{- $root = $in.context -}}
{{- $subchart = default "tollgate" $in.subchart -}}
{{- end -}}
{{- $ctx := $root -}}
{{- if and (hasKey $root "Subcharts") (hasKey (default dict $root.Subcharts) $subchart) -}}
{{- $ctx = index $root.Subcharts $subchart -}}
{{- else if and (not (hasKey $root.Values "sidecar")) (kindIs "map" (get $root.Values $subchart)) -}}
{{- /* A Helm without .Subcharts: the dependency's values, merged with its defaults, are in the parent's values. */ -}}
{{- $values := get $root.Values $subchart -}}
{{- $tag := required (printf "%s.image.tag: set it (this Helm gives no access to the dependency's appVersion)" $subchart) $values.image.tag -}}
{{- $ctx = dict "Values" $values "Release" $root.Release "Chart" (dict "Name" $subchart "AppVersion" $tag) -}}
{{- end -}}
{{- if not (hasKey $ctx.Values "sidecar") -}}
{{- fail (printf "tollgate helpers: chart %q has no dependency named %q; for an aliased dependency call them with (dict \"context\" . \"subchart\" \"<alias>\")" $root.Chart.Name $subchart) -}}
{{- end -}}
{{- $_ := set $out "ctx" $ctx -}}
{{- end -}}

{{/* The chart name, "tollgate" unless nameOverride. Fixed (not .Chart.Name) so
that a parent chart and an aliased dependency compute the same names. */}}
{{- define "tollgate.name" -}}
{{- default "tollgate" .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tollgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "tollgate.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tollgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tollgate.labels" -}}
helm.sh/chart: {{ include "tollgate.chart" . }}
{{ include "tollgate.selectorLabels" . }}
app.kubernetes.io/version: {{ default .Chart.AppVersion .Values.image.tag | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tollgate
{{- end -}}

{{- define "tollgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tollgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Selector labels of the standalone pods. */}}
{{- define "tollgate.standaloneSelectorLabels" -}}
{{ include "tollgate.selectorLabels" . }}
app.kubernetes.io/component: decision-point
{{- end -}}

{{/* Selector labels of the example pods. */}}
{{- define "tollgate.exampleSelectorLabels" -}}
{{ include "tollgate.selectorLabels" . }}
app.kubernetes.io/component: example
{{- end -}}

{{/* Selector labels of the pods that this chart's own workload runs. */}}
{{- define "tollgate.workloadSelectorLabels" -}}
{{- if eq .Values.mode "standalone" -}}
{{ include "tollgate.standaloneSelectorLabels" . }}
{{- else -}}
{{ include "tollgate.exampleSelectorLabels" . }}
{{- end -}}
{{- end -}}

{{- define "tollgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tollgate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tollgate.policiesConfigMap" -}}
{{- default (printf "%s-policies" (include "tollgate.fullname" .)) .Values.policies.existingConfigMap -}}
{{- end -}}

{{- define "tollgate.entitlementsConfigMap" -}}
{{- default (printf "%s-entitlements" (include "tollgate.fullname" .)) .Values.entitlements.existingConfigMap -}}
{{- end -}}

{{/* The ConfigMap with the ext_authz route table (routes.yaml). */}}
{{- define "tollgate.extAuthzConfigMap" -}}
{{- printf "%s-ext-authz" (include "tollgate.fullname" .) -}}
{{- end -}}

{{/* The ConfigMap with the JWT issuers file (issuers.yaml). */}}
{{- define "tollgate.jwtConfigMap" -}}
{{- printf "%s-jwt" (include "tollgate.fullname" .) -}}
{{- end -}}

{{/* True ("true") when tenants come from the entitlements directory: neither
Redis nor signed licenses serve them (tollgate then ignores the directory). */}}
{{- define "tollgate.entitlementsFromFiles" -}}
{{- if not (or .Values.redis.enabled .Values.licenses.enabled) -}}true{{- end -}}
{{- end -}}

{{/* Where the license clock file lives: a writable directory of its own. */}}
{{- define "tollgate.licenseClockDir" -}}
/var/lib/tollgate/license-clock
{{- end -}}

{{/* The Secret the chart creates for values given inline. */}}
{{- define "tollgate.secretName" -}}
{{- include "tollgate.fullname" . -}}
{{- end -}}

{{/*
Where tollgate's API (and the AdminService, the HTTP front door and ext_authz)
listen: 0.0.0.0 in mode standalone,
where other pods call it; 127.0.0.1 beside an app (modes sidecar and example),
where only the pod's own containers reach it. The kubelet's probes go to the
health-only listener on the pod IP instead.
*/}}
{{- define "tollgate.apiHost" -}}
{{- ternary "0.0.0.0" "127.0.0.1" (eq .Values.mode "standalone") -}}
{{- end -}}

{{/* The Secret with tls.crt, tls.key and ca.crt: cert-manager's (<fullname>-tls) or an existing one. */}}
{{- define "tollgate.tlsSecretName" -}}
{{- if .Values.tls.certManager.enabled -}}
{{- printf "%s-tls" (include "tollgate.fullname" .) -}}
{{- else -}}
{{- .Values.tls.secretName -}}
{{- end -}}
{{- end -}}

{{/* True ("true") when a callers file is configured (existing Secret or callers.config). */}}
{{- define "tollgate.callersEnabled" -}}
{{- if or .Values.callers.existingSecret .Values.callers.config -}}true{{- end -}}
{{- end -}}

{{/* The Secret with callers.yaml and its token files: an existing one or the chart's <fullname>-callers. */}}
{{- define "tollgate.callersSecretName" -}}
{{- default (printf "%s-callers" (include "tollgate.fullname" .)) .Values.callers.existingSecret -}}
{{- end -}}

{{/* True ("true") when some secret value is given inline, so the chart creates its Secret. */}}
{{- define "tollgate.createSecret" -}}
{{- $redis := and .Values.redis.enabled (or .Values.redis.url.value .Values.redis.password.value) -}}
{{- $admin := and .Values.admin.enabled .Values.admin.token.value -}}
{{- if or $redis $admin -}}true{{- end -}}
{{- end -}}

{{/* A value as text for an environment variable: whole numbers without an exponent. */}}
{{- define "tollgate.scalar" -}}
{{- if and (kindIs "float64" .) (eq (float64 (int64 .)) .) -}}
{{- int64 . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/* One env entry read from a Secret: (list <ctx> <env name> <secret value spec>). */}}
{{- define "tollgate.secretEnv" -}}
{{- $ctx := index . 0 -}}
{{- $name := index . 1 -}}
{{- $spec := index . 2 -}}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ default (include "tollgate.secretName" $ctx) $spec.secretName }}
      key: {{ $spec.secretKey }}
{{- end -}}

{{- define "tollgate.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag | toString -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The environment of the tollgate container: every setting is a TOLLGATE_<KEY>. */}}
{{- define "tollgate.env" -}}
{{- $v := .Values -}}
- name: TOLLGATE_LISTEN
  value: {{ printf "%s:%d" (include "tollgate.apiHost" .) (int $v.grpc.port) | quote }}
- name: TOLLGATE_HEALTH_LISTEN
  value: {{ printf "0.0.0.0:%d" (int $v.health.port) | quote }}
# The allocator hands freed request buffers back to the system at once:
# measured, this bounds peak memory under hostile load and costs a usual
# Check nothing (benches/README.md, "Hostile load").
- name: MIMALLOC_PURGE_DELAY
  value: "0"
{{- if $v.insecureListen }}
- name: TOLLGATE_INSECURE_LISTEN
  value: "true"
{{- end }}
{{- if $v.tls.enabled }}
- name: TOLLGATE_TLS_CERT_FILE
  value: "/etc/tollgate/tls/tls.crt"
- name: TOLLGATE_TLS_KEY_FILE
  value: "/etc/tollgate/tls/tls.key"
{{- if ne $v.tls.clientAuth "none" }}
- name: TOLLGATE_TLS_CLIENT_CA_FILE
  value: "/etc/tollgate/tls/ca.crt"
- name: TOLLGATE_TLS_CLIENT_AUTH
  value: {{ $v.tls.clientAuth | quote }}
{{- end }}
{{- end }}
{{- if include "tollgate.callersEnabled" . }}
- name: TOLLGATE_CALLERS_FILE
  value: "/etc/tollgate/callers/callers.yaml"
{{- end }}
- name: TOLLGATE_POLICIES
  value: {{ $v.policies.mountPath | quote }}
{{- if include "tollgate.entitlementsFromFiles" . }}
- name: TOLLGATE_ENTITLEMENTS
  value: {{ $v.entitlements.mountPath | quote }}
{{- end }}
- name: TOLLGATE_METRICS_LISTEN
  value: {{ ternary (printf "0.0.0.0:%d" (int $v.metrics.port)) "" $v.metrics.enabled | quote }}
- name: TOLLGATE_SHUTDOWN_DELAY_MS
  value: {{ include "tollgate.scalar" $v.shutdown.delayMs | quote }}
- name: TOLLGATE_SHUTDOWN_GRACE_MS
  value: {{ include "tollgate.scalar" $v.shutdown.graceMs | quote }}
{{- if $v.unixSocket.enabled }}
- name: TOLLGATE_LISTEN_UNIX
  value: {{ $v.unixSocket.path | quote }}
{{- end }}
{{- if $v.admin.enabled }}
- name: TOLLGATE_ADMIN_LISTEN
  value: {{ printf "%s:%d" (include "tollgate.apiHost" .) (int $v.admin.port) | quote }}
{{ include "tollgate.secretEnv" (list . "TOLLGATE_ADMIN_TOKEN" $v.admin.token) }}
{{- end }}
{{- if $v.http.enabled }}
- name: TOLLGATE_HTTP_LISTEN
  value: {{ printf "%s:%d" (include "tollgate.apiHost" .) (int $v.http.port) | quote }}
{{- with $v.http.authzen.tenant }}
- name: TOLLGATE_AUTHZEN_TENANT
  value: {{ . | quote }}
{{- end }}
{{- with $v.http.authzen.namespace }}
- name: TOLLGATE_AUTHZEN_NAMESPACE
  value: {{ . | quote }}
{{- end }}
{{- with $v.http.authzen.types }}
- name: TOLLGATE_AUTHZEN_TYPES
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- if $v.extAuthz.enabled }}
- name: TOLLGATE_EXT_AUTHZ_LISTEN
  value: {{ printf "%s:%d" (include "tollgate.apiHost" .) (int $v.extAuthz.port) | quote }}
- name: TOLLGATE_EXT_AUTHZ_FILE
  value: "/etc/tollgate/ext-authz/routes.yaml"
{{- end }}
{{- if $v.jwt.enabled }}
- name: TOLLGATE_JWT_FILE
  value: "/etc/tollgate/jwt/issuers.yaml"
{{- end }}
{{- if $v.licenses.enabled }}
- name: TOLLGATE_LICENSES
  value: "/etc/tollgate/licenses"
- name: TOLLGATE_LICENSE_KEYS
  value: "/etc/tollgate/license-keys"
- name: TOLLGATE_LICENSE_POLL_MS
  value: {{ include "tollgate.scalar" $v.licenses.pollMs | quote }}
- name: TOLLGATE_LICENSE_CLOCK_SKEW_MS
  value: {{ include "tollgate.scalar" $v.licenses.clockSkewMs | quote }}
{{- if $v.licenses.clock.enabled }}
- name: TOLLGATE_LICENSE_CLOCK_FILE
  value: {{ printf "%s/clock" (include "tollgate.licenseClockDir" .) | quote }}
{{- end }}
{{- with $v.licenses.installId }}
- name: TOLLGATE_INSTALL_ID
  value: {{ . | quote }}
{{- end }}
{{- with $v.licenses.clusterId }}
- name: TOLLGATE_CLUSTER_ID
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- if $v.redis.enabled }}
{{ include "tollgate.secretEnv" (list . "TOLLGATE_REDIS_URL" $v.redis.url) }}
{{- if $v.redis.username }}
- name: TOLLGATE_REDIS_USERNAME
  value: {{ $v.redis.username | quote }}
{{- end }}
{{- if or $v.redis.password.value $v.redis.password.secretName }}
{{ include "tollgate.secretEnv" (list . "TOLLGATE_REDIS_PASSWORD" $v.redis.password) }}
{{- end }}
- name: TOLLGATE_REDIS_CLUSTER
  value: {{ $v.redis.cluster | toString | quote }}
{{- if not (kindIs "invalid" $v.redis.timeoutMs) }}
- name: TOLLGATE_REDIS_TIMEOUT_MS
  value: {{ include "tollgate.scalar" $v.redis.timeoutMs | quote }}
{{- end }}
{{- if $v.redis.tlsCa.secretName }}
- name: TOLLGATE_REDIS_TLS_CA_FILE
  value: {{ printf "/etc/tollgate/redis-ca/%s" $v.redis.tlsCa.secretKey | quote }}
{{- end }}
{{- if not (kindIs "invalid" $v.redis.cacheTtlMs) }}
- name: TOLLGATE_CACHE_TTL_MS
  value: {{ include "tollgate.scalar" $v.redis.cacheTtlMs | quote }}
{{- end }}
{{- if not (kindIs "invalid" $v.redis.cacheMaxBytes) }}
- name: TOLLGATE_CACHE_MAX_BYTES
  value: {{ include "tollgate.scalar" $v.redis.cacheMaxBytes | quote }}
{{- end }}
{{- if not (kindIs "invalid" $v.redis.maxStaleMs) }}
- name: TOLLGATE_MAX_STALE_MS
  value: {{ include "tollgate.scalar" $v.redis.maxStaleMs | quote }}
{{- end }}
{{- end }}
{{- range $key, $value := $v.config }}
- name: {{ printf "TOLLGATE_%s" (upper $key) }}
  value: {{ include "tollgate.scalar" $value | quote }}
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* A gRPC probe of the health-only listener: (list <ctx> <probe values> <health service name>). */}}
{{- define "tollgate.probe" -}}
{{- $ctx := index . 0 -}}
{{- $probe := index . 1 -}}
grpc:
  port: {{ $ctx.Values.health.port }}
  {{- with index . 2 }}
  service: {{ . }}
  {{- end }}
periodSeconds: {{ $probe.periodSeconds }}
timeoutSeconds: {{ $probe.timeoutSeconds }}
failureThreshold: {{ $probe.failureThreshold }}
{{- end -}}

{{/*
tollgate.sidecar: the tollgate container, as one item of a containers list
(or, with sidecar.native, of an initContainers list). Public.
*/}}
{{- define "tollgate.sidecar" -}}
{{- $scope := dict -}}
{{- include "tollgate.scope" (list . $scope) -}}
{{- $ctx := $scope.ctx -}}
{{- $v := $ctx.Values -}}
- name: {{ $v.sidecar.containerName }}
  image: {{ include "tollgate.image" $ctx | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if $v.sidecar.native }}
  # A native sidecar (Kubernetes >= 1.29): started before, stopped after the app.
  restartPolicy: Always
  {{- end }}
  # The ports listening on the pod IP. Beside an app the API (and the
  # AdminService, the HTTP front door, ext_authz) listen on 127.0.0.1 only and
  # are not declared.
  ports:
    - name: tg-health
      containerPort: {{ $v.health.port }}
      protocol: TCP
    {{- if $v.metrics.enabled }}
    - name: tg-metrics
      containerPort: {{ $v.metrics.port }}
      protocol: TCP
    {{- end }}
    {{- if eq $v.mode "standalone" }}
    - name: tg-grpc
      containerPort: {{ $v.grpc.port }}
      protocol: TCP
    {{- if $v.admin.enabled }}
    - name: tg-admin
      containerPort: {{ $v.admin.port }}
      protocol: TCP
    {{- end }}
    {{- if $v.http.enabled }}
    - name: tg-http
      containerPort: {{ $v.http.port }}
      protocol: TCP
    {{- end }}
    {{- if $v.extAuthz.enabled }}
    - name: tg-ext-authz
      containerPort: {{ $v.extAuthz.port }}
      protocol: TCP
    {{- end }}
    {{- end }}
  env:
    {{- include "tollgate.env" $ctx | nindent 4 }}
  {{- if $v.probes.startup.enabled }}
  startupProbe:
    {{- include "tollgate.probe" (list $ctx $v.probes.startup "") | nindent 4 }}
  {{- end }}
  {{- if $v.probes.readiness.enabled }}
  readinessProbe:
    {{- include "tollgate.probe" (list $ctx $v.probes.readiness "tollgate.v1.EntitlementService") | nindent 4 }}
  {{- end }}
  {{- if $v.probes.liveness.enabled }}
  livenessProbe:
    {{- include "tollgate.probe" (list $ctx $v.probes.liveness "") | nindent 4 }}
  {{- end }}
  resources:
    {{- toYaml $v.resources | nindent 4 }}
  securityContext:
    {{- toYaml $v.securityContext | nindent 4 }}
  volumeMounts:
    # A whole-directory mount, never subPath: the kubelet updates it in place
    # (the ..data symlink swap) and tollgate hot-reloads.
    - name: tollgate-policies
      mountPath: {{ $v.policies.mountPath }}
      readOnly: true
    {{- if include "tollgate.entitlementsFromFiles" $ctx }}
    - name: tollgate-entitlements
      mountPath: {{ $v.entitlements.mountPath }}
      readOnly: true
    {{- end }}
    {{- if and $v.redis.enabled $v.redis.tlsCa.secretName }}
    - name: tollgate-redis-ca
      mountPath: /etc/tollgate/redis-ca
      readOnly: true
    {{- end }}
    {{- if $v.tls.enabled }}
    # Secrets as whole directories too: a renewed certificate or an edited
    # callers file reaches the pod, and tollgate reloads it.
    - name: tollgate-tls
      mountPath: /etc/tollgate/tls
      readOnly: true
    {{- end }}
    {{- if include "tollgate.callersEnabled" $ctx }}
    - name: tollgate-callers
      mountPath: /etc/tollgate/callers
      readOnly: true
    {{- end }}
    {{- if $v.extAuthz.enabled }}
    # The route table; tollgate reads it at start (the chart's own pods carry
    # its checksum, so an edit rolls them).
    - name: tollgate-ext-authz
      mountPath: /etc/tollgate/ext-authz
      readOnly: true
    {{- end }}
    {{- if $v.jwt.enabled }}
    # issuers.yaml and the JWKS files of jwt.jwksSecret in one directory (a
    # projected volume), so that a relative jwks_file resolves; tollgate
    # rereads them when they change.
    - name: tollgate-jwt
      mountPath: /etc/tollgate/jwt
      readOnly: true
    {{- end }}
    {{- if $v.licenses.enabled }}
    # The signed licenses and the trusted keys (with revoked.yaml): Secrets as
    # whole directories, which tollgate watches and rescans when they change.
    - name: tollgate-licenses
      mountPath: /etc/tollgate/licenses
      readOnly: true
    - name: tollgate-license-keys
      mountPath: /etc/tollgate/license-keys
      readOnly: true
    {{- if $v.licenses.clock.enabled }}
    # The license clock file: the one directory tollgate writes to.
    - name: tollgate-license-clock
      mountPath: {{ include "tollgate.licenseClockDir" $ctx }}
    {{- end }}
    {{- end }}
    {{- if $v.unixSocket.enabled }}
    - name: tollgate-socket
      mountPath: {{ dir $v.unixSocket.path }}
    {{- end }}
    {{- with $v.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  terminationMessagePolicy: FallbackToLogsOnError
{{- end -}}

{{/* tollgate.volumes: the pod volumes the sidecar mounts, as list items. Public. */}}
{{- define "tollgate.volumes" -}}
{{- $scope := dict -}}
{{- include "tollgate.scope" (list . $scope) -}}
{{- $ctx := $scope.ctx -}}
{{- $v := $ctx.Values -}}
- name: tollgate-policies
  configMap:
    name: {{ include "tollgate.policiesConfigMap" $ctx }}
{{- if include "tollgate.entitlementsFromFiles" $ctx }}
- name: tollgate-entitlements
  configMap:
    name: {{ include "tollgate.entitlementsConfigMap" $ctx }}
{{- end }}
{{- if and $v.redis.enabled $v.redis.tlsCa.secretName }}
- name: tollgate-redis-ca
  secret:
    secretName: {{ $v.redis.tlsCa.secretName }}
    items:
      - key: {{ $v.redis.tlsCa.secretKey }}
        path: {{ $v.redis.tlsCa.secretKey }}
{{- end }}
{{- if $v.tls.enabled }}
- name: tollgate-tls
  secret:
    secretName: {{ include "tollgate.tlsSecretName" $ctx }}
{{- end }}
{{- if include "tollgate.callersEnabled" $ctx }}
- name: tollgate-callers
  secret:
    secretName: {{ include "tollgate.callersSecretName" $ctx }}
{{- end }}
{{- if $v.extAuthz.enabled }}
- name: tollgate-ext-authz
  configMap:
    name: {{ include "tollgate.extAuthzConfigMap" $ctx }}
{{- end }}
{{- if $v.jwt.enabled }}
- name: tollgate-jwt
  projected:
    sources:
      - configMap:
          name: {{ include "tollgate.jwtConfigMap" $ctx }}
          items:
            - key: issuers.yaml
              path: issuers.yaml
      {{- with $v.jwt.jwksSecret }}
      - secret:
          name: {{ . }}
      {{- end }}
{{- end }}
{{- if $v.licenses.enabled }}
- name: tollgate-licenses
  secret:
    secretName: {{ $v.licenses.secretName }}
- name: tollgate-license-keys
  secret:
    secretName: {{ $v.licenses.keysSecretName }}
{{- if $v.licenses.clock.enabled }}
- name: tollgate-license-clock
  {{- with $v.licenses.clock.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ . }}
  {{- else }}
  emptyDir:
    sizeLimit: 1Mi
  {{- end }}
{{- end }}
{{- end }}
{{- if $v.unixSocket.enabled }}
- name: tollgate-socket
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
{{- end }}
{{- end -}}

{{/*
tollgate.socketVolumeMount: the volume mount that gives an app container the
Unix socket directory, as a list item; empty when unixSocket is off. Public.
*/}}
{{- define "tollgate.socketVolumeMount" -}}
{{- $scope := dict -}}
{{- include "tollgate.scope" (list . $scope) -}}
{{- $v := $scope.ctx.Values -}}
{{- if $v.unixSocket.enabled -}}
- name: tollgate-socket
  mountPath: {{ dir $v.unixSocket.path }}
{{- end -}}
{{- end -}}

{{/*
tollgate.terminationGracePeriodSeconds: the pod grace period tollgate needs:
terminationGracePeriodSeconds, or the drain (shutdown delay + grace) plus 5 s. Public.
*/}}
{{- define "tollgate.terminationGracePeriodSeconds" -}}
{{- $scope := dict -}}
{{- include "tollgate.scope" (list . $scope) -}}
{{- $v := $scope.ctx.Values -}}
{{- $drain := add (div (add $v.shutdown.delayMs $v.shutdown.graceMs 999) 1000) 5 -}}
{{- if kindIs "invalid" $v.terminationGracePeriodSeconds -}}
{{- $drain -}}
{{- else -}}
{{- int64 $v.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/* topologySpreadConstraints with the pods' own labels filled in where no labelSelector is given. */}}
{{- define "tollgate.topologySpreadConstraints" -}}
{{- $ctx := index . 0 -}}
{{- $selector := index . 1 | fromYaml -}}
{{- range $ctx.Values.topologySpreadConstraints }}
{{- $constraint := deepCopy . }}
{{- if not (hasKey $constraint "labelSelector") }}
{{- $_ := set $constraint "labelSelector" (dict "matchLabels" $selector) }}
{{- end }}
- {{ toYaml $constraint | nindent 2 | trim }}
{{- end }}
{{- end -}}

{{/* Pod settings shared by the example and standalone workloads. */}}
{{- define "tollgate.podSettings" -}}
{{- $ctx := index . 0 -}}
{{- $selector := index . 1 -}}
{{- $v := $ctx.Values -}}
serviceAccountName: {{ include "tollgate.serviceAccountName" $ctx }}
automountServiceAccountToken: false
# Kubernetes would otherwise set <SERVICE>_SERVICE_HOST variables, and a
# Service whose name starts with "tollgate" yields TOLLGATE_* names that
# tollgate refuses as unknown configuration keys.
enableServiceLinks: false
terminationGracePeriodSeconds: {{ include "tollgate.terminationGracePeriodSeconds" $ctx }}
securityContext:
  {{- toYaml $v.podSecurityContext | nindent 2 }}
{{- with $v.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- include "tollgate.topologySpreadConstraints" (list $ctx $selector) | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Pod annotations: the user's, plus a checksum of the chart's Secret (env
from a Secret is read only at start) and of the ext_authz route table (read
only at start too). Deliberately no checksum of the policy or entitlement
ConfigMaps, the callers file, the TLS certificate or the JWT issuers: those
reach running pods through the volume and tollgate reloads them, and a restart
on every edit would defeat that. */}}
{{- define "tollgate.podAnnotations" -}}
{{- $annotations := deepCopy .Values.podAnnotations -}}
{{- if include "tollgate.createSecret" . -}}
{{- $_ := set $annotations "checksum/secret" (include (print .Template.BasePath "/secret.yaml") . | sha256sum) -}}
{{- end -}}
{{- if .Values.extAuthz.enabled -}}
{{- $_ := set $annotations "checksum/ext-authz-routes" (toYaml .Values.extAuthz.routes | sha256sum) -}}
{{- end -}}
{{- with $annotations -}}
{{ toYaml . }}
{{- end -}}
{{- end -}}

{{/* Checks of value combinations that values.schema.json cannot express. */}}
{{- define "tollgate.validate" -}}
{{- $v := .Values -}}
{{- if and $v.redis.enabled (not (or $v.redis.url.value $v.redis.url.secretName)) -}}
{{- fail "redis.enabled: set redis.url.value or redis.url.secretName" -}}
{{- end -}}
{{- if and $v.redis.url.value $v.redis.url.secretName -}}
{{- fail "redis.url: set either value or secretName, not both" -}}
{{- end -}}
{{- if and $v.redis.password.value $v.redis.password.secretName -}}
{{- fail "redis.password: set either value or secretName, not both" -}}
{{- end -}}
{{- if and $v.admin.enabled (not (or $v.admin.token.value $v.admin.token.secretName (include "tollgate.callersAdmin" .))) -}}
{{- fail "admin.enabled: set admin.token.value or admin.token.secretName, or give a caller admin operations (callers.existingSecret, or callers.config with admin.* or \"*\"): every AdminService call needs one" -}}
{{- end -}}
{{- if and $v.admin.enabled (not $v.redis.enabled) -}}
{{- fail "admin.enabled: the AdminService writes snapshots to Redis; set redis.enabled too" -}}
{{- end -}}
{{- if and (contains "," $v.redis.url.value) (not $v.redis.cluster) -}}
{{- fail "redis.url.value: several nodes need redis.cluster: true" -}}
{{- end -}}
{{- if and $v.admin.token.value $v.admin.token.secretName -}}
{{- fail "admin.token: set either value or secretName, not both" -}}
{{- end -}}
{{- $ports := list (int $v.grpc.port) -}}
{{- if has (int $v.health.port) $ports -}}{{- fail (printf "health.port: %d is already used by grpc.port" (int $v.health.port)) -}}{{- end -}}
{{- $ports = append $ports (int $v.health.port) -}}
{{- if $v.metrics.enabled -}}
{{- if has (int $v.metrics.port) $ports -}}{{- fail (printf "metrics.port: %d is already used by grpc.port or health.port" (int $v.metrics.port)) -}}{{- end -}}
{{- $ports = append $ports (int $v.metrics.port) -}}
{{- end -}}
{{- if and $v.admin.enabled (has (int $v.admin.port) $ports) -}}
{{- fail (printf "admin.port: %d is already used by another tollgate port" (int $v.admin.port)) -}}
{{- end -}}
{{- if $v.admin.enabled -}}{{- $ports = append $ports (int $v.admin.port) -}}{{- end -}}
{{- if and $v.http.enabled (has (int $v.http.port) $ports) -}}
{{- fail (printf "http.port: %d is already used by another tollgate port" (int $v.http.port)) -}}
{{- end -}}
{{- if $v.http.enabled -}}{{- $ports = append $ports (int $v.http.port) -}}{{- end -}}
{{- if and $v.extAuthz.enabled (has (int $v.extAuthz.port) $ports) -}}
{{- fail (printf "extAuthz.port: %d is already used by another tollgate port" (int $v.extAuthz.port)) -}}
{{- end -}}
{{- $drain := div (add $v.shutdown.delayMs $v.shutdown.graceMs 999) 1000 -}}
{{- if and (not (kindIs "invalid" $v.terminationGracePeriodSeconds)) (lt (int64 $v.terminationGracePeriodSeconds) (int64 $drain)) -}}
{{- fail (printf "terminationGracePeriodSeconds: %d is shorter than the drain it must cover (shutdown.delayMs + shutdown.graceMs = %d s)" (int64 $v.terminationGracePeriodSeconds) (int64 $drain)) -}}
{{- end -}}
{{- if and $v.networkPolicy.enabled (eq $v.mode "sidecar") -}}
{{- fail "networkPolicy.enabled: only for mode example or standalone; in mode sidecar the pods are yours, so is their NetworkPolicy" -}}
{{- end -}}
{{- if and $v.metrics.serviceMonitor.enabled (ne $v.mode "standalone") -}}
{{- fail "metrics.serviceMonitor.enabled: only for mode standalone (it scrapes the Service); use metrics.podMonitor for sidecars" -}}
{{- end -}}
{{- if and (or $v.metrics.serviceMonitor.enabled $v.metrics.podMonitor.enabled) (not $v.metrics.enabled) -}}
{{- fail "metrics.enabled: must be true for metrics.serviceMonitor or metrics.podMonitor" -}}
{{- end -}}
{{- if and $v.metrics.podMonitor.enabled (eq $v.mode "sidecar") (not $v.metrics.podMonitor.selector) -}}
{{- fail "metrics.podMonitor.selector: required in mode sidecar (the labels of your pods that run the sidecar)" -}}
{{- end -}}
{{- if and (eq $v.mode "standalone") $v.unixSocket.enabled -}}
{{- fail "unixSocket.enabled: a Unix socket is shared within a pod; mode standalone has no app beside tollgate" -}}
{{- end -}}
{{- if and (eq $v.mode "standalone") $v.sidecar.native -}}
{{- fail "sidecar.native: only for modes sidecar and example" -}}
{{- end -}}
{{- include "tollgate.validateTls" . -}}
{{- include "tollgate.validateCallers" . -}}
{{- include "tollgate.validateExtAuthz" . -}}
{{- include "tollgate.validateJwt" . -}}
{{- include "tollgate.validateLicenses" . -}}
{{- if and (eq $v.mode "standalone") (not $v.insecureListen) (not (and $v.tls.enabled (include "tollgate.callersEnabled" .))) -}}
{{- $callers := ternary "set" "not set" (eq (include "tollgate.callersEnabled" .) "true") -}}
{{- $listeners := list "the API" -}}
{{- if $v.admin.enabled -}}{{- $listeners = append $listeners "the AdminService (admin.enabled)" -}}{{- end -}}
{{- if $v.http.enabled -}}{{- $listeners = append $listeners "the HTTP front door (http.enabled)" -}}{{- end -}}
{{- if $v.extAuthz.enabled -}}{{- $listeners = append $listeners "ext_authz (extAuthz.enabled)" -}}{{- end -}}
{{- fail (printf "mode standalone: %s listen%s on 0.0.0.0, which tollgate refuses without TLS and callers. Set tls.enabled (with tls.secretName or tls.certManager.enabled) and callers.existingSecret or callers.config (now: tls.enabled %v, callers %s); or, behind something else that authenticates callers (a mesh with mutual TLS), acknowledge plaintext with insecureListen: true" (join ", " $listeners) (ternary "" "s" (gt (len $listeners) 1)) $v.tls.enabled $callers) -}}
{{- end -}}
{{- end -}}

{{/* True ("true") when the callers may include one with admin operations. */}}
{{- define "tollgate.callersAdmin" -}}
{{- $found := .Values.callers.existingSecret -}}
{{- $config := .Values.callers.config -}}
{{- $entries := concat (default list $config.callers) (list (default dict $config.local)) -}}
{{- range $entries -}}
{{- range (default list .operations) -}}
{{- if or (eq . "*") (hasPrefix "admin." .) -}}{{- $found = true -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- if $found -}}true{{- end -}}
{{- end -}}

{{/* Checks of extAuthz.*: the route table tollgate needs, and JWT claims only with jwt.enabled. */}}
{{- define "tollgate.validateExtAuthz" -}}
{{- $ext := .Values.extAuthz -}}
{{- if $ext.enabled -}}
{{- if not $ext.routes -}}
{{- fail "extAuthz.routes: extAuthz.enabled needs the route table (tenant, principal, routes; docs/envoy/routes.yaml is an example, and values.yaml shows it)" -}}
{{- end -}}
{{- $missing := list -}}
{{- range (list "tenant" "principal" "routes") -}}
{{- if not (hasKey $ext.routes .) -}}{{- $missing = append $missing . -}}{{- end -}}
{{- end -}}
{{- if $missing -}}
{{- fail (printf "extAuthz.routes: the route table lacks %s (tollgate refuses it at start)" (join ", " $missing)) -}}
{{- end -}}
{{- if not .Values.jwt.enabled -}}
{{- range (list "tenant" "principal") -}}
{{- if hasKey (default dict (get $ext.routes .)) "claim" -}}
{{- fail (printf "extAuthz.routes: %s comes from a JWT claim, which needs jwt.enabled (without verified JWTs every request would lack it)" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Checks of jwt.*: the issuers file, and the JWKS files a relative jwks_file needs. */}}
{{- define "tollgate.validateJwt" -}}
{{- $jwt := .Values.jwt -}}
{{- if $jwt.enabled -}}
{{- if not (default list $jwt.issuers.issuers) -}}
{{- fail "jwt.issuers: jwt.enabled needs the issuers file ({issuers: [{issuer, audiences, algorithms, jwks_url or jwks_file, ...}]}); tollgate refuses a file without issuers" -}}
{{- end -}}
{{- $names := list -}}
{{- range $jwt.issuers.issuers -}}
{{- if has .issuer $names -}}
{{- fail (printf "jwt.issuers: issuer %s is listed twice" .issuer) -}}
{{- end -}}
{{- $names = append $names .issuer -}}
{{- if and .jwks_file (not (hasPrefix "/" .jwks_file)) -}}
{{- if not $jwt.jwksSecret -}}
{{- fail (printf "jwt.jwksSecret: issuer %s names jwks_file %s, relative to issuers.yaml's directory; set jwt.jwksSecret to the Secret holding it (key %s), or use jwks_url" .issuer .jwks_file .jwks_file) -}}
{{- end -}}
{{- if or (contains "/" .jwks_file) (eq .jwks_file "issuers.yaml") -}}
{{- fail (printf "jwt.issuers: issuer %s: jwks_file %s must be a key of jwt.jwksSecret (a plain file name, not issuers.yaml)" .issuer .jwks_file) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Checks of licenses.*: tollgate refuses licenses without trusted keys, and keys without licenses. */}}
{{- define "tollgate.validateLicenses" -}}
{{- $licenses := .Values.licenses -}}
{{- if $licenses.enabled -}}
{{- if not $licenses.secretName -}}
{{- fail "licenses.secretName: licenses.enabled needs the existing Secret whose keys are the signed license files (<name>.license, one compact JWS each)" -}}
{{- end -}}
{{- if not $licenses.keysSecretName -}}
{{- fail "licenses.keysSecretName: licenses.enabled needs the existing Secret with the trusted Ed25519 public keys (<key id>.pem, SPKI PEM) and optionally revoked.yaml; tollgate refuses licenses without keys" -}}
{{- end -}}
{{- if and $licenses.clock.enabled $licenses.clock.existingClaim (ne .Values.mode "sidecar") -}}
{{- $replicas := ternary (int .Values.example.replicas) (int .Values.replicaCount) (eq .Values.mode "example") -}}
{{- $scaled := and (eq .Values.mode "standalone") .Values.autoscaling.enabled -}}
{{- if or (gt $replicas 1) $scaled -}}
{{- fail (printf "licenses.clock.existingClaim: the pods of mode %s would share one clock file (%d replicas%s); use it with one replica, or leave it empty for an emptyDir per pod" .Values.mode $replicas (ternary ", autoscaling.enabled" "" $scaled)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Checks of tls.*. */}}
{{- define "tollgate.validateTls" -}}
{{- $tls := .Values.tls -}}
{{- if and $tls.certManager.enabled (not $tls.enabled) -}}
{{- fail "tls.certManager.enabled: set tls.enabled too" -}}
{{- end -}}
{{- if $tls.enabled -}}
{{- if and $tls.secretName $tls.certManager.enabled -}}
{{- fail "tls: set either tls.secretName or tls.certManager.enabled, not both" -}}
{{- end -}}
{{- if not (or $tls.secretName $tls.certManager.enabled) -}}
{{- fail "tls.enabled: set tls.secretName (an existing kubernetes.io/tls Secret) or tls.certManager.enabled" -}}
{{- end -}}
{{- if and $tls.certManager.enabled (not $tls.certManager.issuerRef.name) -}}
{{- fail "tls.certManager.issuerRef.name: the Issuer or ClusterIssuer that signs tollgate's certificate" -}}
{{- end -}}
{{- if and $tls.certManager.enabled (ne .Values.mode "standalone") (not $tls.certManager.dnsNames) -}}
{{- fail (printf "tls.certManager.dnsNames: required in mode %s (the names the callers verify; only mode standalone defaults to the Service's names)" .Values.mode) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Checks of callers.*: what tollgate would refuse, or what could never work. */}}
{{- define "tollgate.validateCallers" -}}
{{- $callers := .Values.callers -}}
{{- $tls := .Values.tls -}}
{{- if and $callers.existingSecret (or $callers.config $callers.tokens) -}}
{{- fail "callers.existingSecret: set either it or callers.config (with callers.tokens), not both" -}}
{{- end -}}
{{- if and $callers.tokens (not $callers.config) -}}
{{- fail "callers.tokens: token files need callers.config naming them in token_file" -}}
{{- end -}}
{{- if hasKey (default dict $callers.tokens) "callers.yaml" -}}
{{- fail "callers.tokens: callers.yaml is the callers file itself; name the token file otherwise" -}}
{{- end -}}
{{- $tokens := list -}}
{{- if .Values.admin.enabled -}}{{- $tokens = compact (list .Values.admin.token.value) -}}{{- end -}}
{{- range $name, $token := (default dict $callers.tokens) -}}
{{- if has $token $tokens -}}
{{- fail (printf "callers.tokens: %s holds a token that another caller (or admin.token) already has; tollgate refuses a token shared between callers" $name) -}}
{{- end -}}
{{- $tokens = append $tokens $token -}}
{{- end -}}
{{- $names := list -}}
{{- $tokenFiles := list -}}
{{- range (default list $callers.config.callers) -}}
{{- if has .name (list "local" "anonymous" "admin" "unauthenticated") -}}
{{- fail (printf "callers.config: caller %s: the names local, anonymous, admin and unauthenticated are tollgate's own" .name) -}}
{{- end -}}
{{- if has .name $names -}}
{{- fail (printf "callers.config: caller %s is named twice" .name) -}}
{{- end -}}
{{- $names = append $names .name -}}
{{- if .token_file -}}
{{- if has .token_file $tokenFiles -}}
{{- fail (printf "callers.config: caller %s: token_file %s is another caller's (every caller needs a token of its own)" .name .token_file) -}}
{{- end -}}
{{- $tokenFiles = append $tokenFiles .token_file -}}
{{- end -}}
{{- $byCertificate := or .uri_san .dns_san -}}
{{- if and $byCertificate (or (not $tls.enabled) (eq $tls.clientAuth "none")) -}}
{{- fail (printf "callers.config: caller %s identifies by client certificate (uri_san, dns_san), which needs tls.enabled with tls.clientAuth required or optional" .name) -}}
{{- end -}}
{{- if and (not $byCertificate) $tls.enabled (eq $tls.clientAuth "required") -}}
{{- fail (printf "callers.config: caller %s has only a token_file, but tls.clientAuth required refuses every connection without a client certificate; set tls.clientAuth optional" .name) -}}
{{- end -}}
{{- if and .token_file (not (hasPrefix "/" .token_file)) (not (hasKey (default dict $callers.tokens) .token_file)) -}}
{{- fail (printf "callers.tokens: caller %s names token_file %s, which is not in callers.tokens (relative paths are files of the callers Secret)" .name .token_file) -}}
{{- end -}}
{{- end -}}
{{- end -}}
