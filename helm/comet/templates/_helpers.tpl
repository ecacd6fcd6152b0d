{{/* Names: <release> when it already contains "comet", else <release>-comet; 52 characters at most so that a
StatefulSet's controller-revision-hash label (name + 11) stays within 63. */}}
{{- define "comet.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "comet.nameserver.fullname" -}}
{{- printf "%s-nameserver" (include "comet.fullname" .) -}}
{{- end -}}

{{- define "comet.nameserver.headless" -}}
{{- printf "%s-nameserver-headless" (include "comet.fullname" .) -}}
{{- end -}}

{{/* The broker group's StatefulSet, headless Service and ConfigMap name. Call with (dict "root" $ "group" $g). */}}
{{- define "comet.broker.fullname" -}}
{{- printf "%s-%s" (include "comet.fullname" .root) .group.name | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "comet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "comet.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "comet.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "comet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "comet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: comet
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "comet.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The NameServer's registry backend, as the binary will read it. */}}
{{- define "comet.nameserver.backend" -}}
{{- $registry := .Values.nameserver.config.registry | default dict -}}
{{- $registry.backend | default "memory" -}}
{{- end -}}

{{/* What brokers put in broker.nameserver-addresses: with the memory backend every NameServer pod by its stable
DNS name (each must hear every registration); with etcd the Service (they share state). */}}
{{- define "comet.nameserver.addresses" -}}
{{- $ns := .Release.Namespace -}}
{{- $domain := .Values.clusterDomain -}}
{{- $port := int .Values.nameserver.port -}}
{{- $addresses := list -}}
{{- if eq (include "comet.nameserver.backend" .) "memory" -}}
{{- $sts := include "comet.nameserver.fullname" . -}}
{{- $svc := include "comet.nameserver.headless" . -}}
{{- range $i := until (int .Values.nameserver.replicas) -}}
{{- $addresses = append $addresses (printf "%s-%d.%s.%s.svc.%s:%d" $sts $i $svc $ns $domain $port) -}}
{{- end -}}
{{- else -}}
{{- $addresses = append $addresses (printf "%s.%s.svc.%s:%d" (include "comet.nameserver.fullname" .) $ns $domain $port) -}}
{{- end -}}
{{- toJson $addresses -}}
{{- end -}}

{{/* The NameServer's configuration file (docs/configuration.md, "NameServer"). */}}
{{- define "comet.nameserver.config" -}}
{{- $config := deepCopy (.Values.nameserver.config | default dict) -}}
{{- $server := get $config "nameserver" | default dict -}}
{{- range $key := list "listen" "kv-config-path" -}}
{{- if hasKey $server $key -}}
{{- fail (printf "nameserver.config.nameserver.%s is set by the chart; remove it" $key) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $server "listen" (printf "0.0.0.0:%d" (int .Values.nameserver.port)) -}}
{{- $_ := set $server "kv-config-path" "/var/lib/comet/nameserver/kvConfig.json" -}}
{{- $_ := set $config "nameserver" $server -}}
{{- $_ := set $config "metrics" (include "comet.metrics.config" (dict "root" . "config" $config "what" "nameserver.config") | fromYaml) -}}
{{- if eq (include "comet.nameserver.backend" .) "etcd" -}}
{{- $etcd := get $config "etcd" | default dict -}}
{{- if not $etcd.endpoints -}}
{{- fail "nameserver.config.registry.backend is etcd: set nameserver.config.etcd.endpoints to your etcd cluster's client endpoints" -}}
{{- end -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/* The `metrics:` section of a process's config: the /metrics endpoint on the pod's metrics port (the port the
scrape annotations and the ServiceMonitor name; the binaries' own defaults differ, 5557 broker and 5558 NameServer,
so that both run on one machine). Call with (dict "root" $ "config" $config "what" "broker.config"). */}}
{{- define "comet.metrics.config" -}}
{{- $metrics := get .config "metrics" | default dict -}}
{{- if hasKey $metrics "listen" -}}
{{- fail (printf "%s.metrics.listen is set by the chart (metrics.port); remove it" .what) -}}
{{- end -}}
{{- $_ := set $metrics "listen" (printf "0.0.0.0:%d" (int .root.Values.metrics.port)) -}}
{{- toYaml $metrics -}}
{{- end -}}

{{/* A broker group's configuration file (docs/configuration.md, "Broker"). Call with (dict "root" $ "group" $g). */}}
{{- define "comet.broker.config" -}}
{{- $root := .root -}}
{{- $group := .group -}}
{{- $config := mergeOverwrite (deepCopy ($root.Values.broker.config | default dict)) (deepCopy ($group.config | default dict)) -}}
{{- $broker := get $config "broker" | default dict -}}
{{- range $key := list "listen" "advertised-address" "broker-name" "broker-id" "nameserver-addresses" -}}
{{- if hasKey $broker $key -}}
{{- fail (printf "broker.config.broker.%s (or the group's config) is set by the chart; remove it" $key) -}}
{{- end -}}
{{- end -}}
{{- $store := get $config "store" | default dict -}}
{{- if hasKey $store "dir" -}}
{{- fail "broker.config.store.dir is set by the chart (the data volume); remove it" -}}
{{- end -}}
{{- $name := include "comet.broker.fullname" (dict "root" $root "group" $group) -}}
{{- $port := int $root.Values.broker.port -}}
{{- $_ := set $broker "listen" (printf "0.0.0.0:%d" $port) -}}
{{- $_ := set $broker "advertised-address" (printf "%s-0.%s.%s.svc.%s:%d" $name $name $root.Release.Namespace $root.Values.clusterDomain $port) -}}
{{- $_ := set $broker "broker-name" $group.name -}}
{{- $_ := set $broker "broker-id" 0 -}}
{{- $_ := set $broker "nameserver-addresses" (include "comet.nameserver.addresses" $root | fromJsonArray) -}}
{{- $_ := set $store "dir" "/var/lib/comet/store" -}}
{{- $_ := set $config "broker" $broker -}}
{{- $_ := set $config "store" $store -}}
{{- $_ := set $config "metrics" (include "comet.metrics.config" (dict "root" $root "config" $config "what" "broker.config") | fromYaml) -}}
{{- toYaml $config -}}
{{- end -}}

{{/* Checks that the grace period covers the broker's shutdown sequence. */}}
{{- define "comet.broker.checkGrace" -}}
{{- $root := .root -}}
{{- $config := mergeOverwrite (deepCopy ($root.Values.broker.config | default dict)) (deepCopy (.group.config | default dict)) -}}
{{- $broker := get $config "broker" | default dict -}}
{{- $graceMs := int (get $broker "shutdown-grace-ms" | default 5000) -}}
{{- $needed := add (div $graceMs 1000) 25 -}}
{{- if le (int $root.Values.broker.terminationGracePeriodSeconds) $needed -}}
{{- fail (printf "broker.terminationGracePeriodSeconds must be above %d s (shutdown-grace-ms %d + 10 s unregistering + 15 s flushing)" $needed $graceMs) -}}
{{- end -}}
{{- end -}}

{{/* Soft anti-affinity over nodes for pods with these labels, unless the user gave an affinity. */}}
{{- define "comet.affinity" -}}
{{- if .affinity -}}
{{- toYaml .affinity -}}
{{- else -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- toYaml .labels | nindent 12 }}
{{- end -}}
{{- end -}}

{{- define "comet.metricsAnnotations" -}}
{{- if .Values.metrics.scrapeAnnotations -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.metrics.port | quote }}
prometheus.io/path: {{ .Values.metrics.path | quote }}
{{- end -}}
{{- end -}}
