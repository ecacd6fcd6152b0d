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

{{/* The slaves' StatefulSet, headless Service and ConfigMap of a group: <group name above, cut to 46>-slave. Call with
(dict "root" $ "group" $g). */}}
{{- define "comet.broker.slave.fullname" -}}
{{- printf "%s-slave" (include "comet.broker.fullname" . | trunc 46 | trimSuffix "-") -}}
{{- end -}}

{{/* Slaves of a group (brokers[].slaves, 0 when absent). */}}
{{- define "comet.broker.slaves" -}}
{{- int (default 0 .slaves) -}}
{{- end -}}

{{/* "true" when some group of the release has slaves (the HA secret, ports and policies exist), else "". */}}
{{- define "comet.ha.enabled" -}}
{{- range .Values.brokers -}}
{{- if gt (int (include "comet.broker.slaves" .)) 0 -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding ha.secret, and its key: broker.ha.existingSecret, else the one the chart generates. */}}
{{- define "comet.ha.secretName" -}}
{{- $existing := .Values.broker.ha.existingSecret | default dict -}}
{{- $existing.name | default (printf "%s-ha" (include "comet.fullname" .)) -}}
{{- end -}}

{{- define "comet.ha.secretKey" -}}
{{- $existing := .Values.broker.ha.existingSecret | default dict -}}
{{- if $existing.name -}}
{{- $existing.key | default "secret" -}}
{{- else -}}
secret
{{- end -}}
{{- end -}}

{{/* The env entry every member of a replicated group gets: ha.secret from the Secret (never from a ConfigMap). */}}
{{- define "comet.ha.secretEnv" -}}
# ha.secret, shared by the master and slaves of every group (docs/configuration.md, "ha"); overrides the file.
- name: COMET_HA_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "comet.ha.secretName" . }}
      key: {{ include "comet.ha.secretKey" . }}
{{- end -}}

{{/* A group's replication settings as JSON {"slaves", "replication", "syncReplicas"}: brokers[].ha over broker.ha.
Refuses what the broker would refuse at start-up (sync without slaves) or could never satisfy (more sync replicas
than slaves: every send would fail). Call with (dict "root" $ "group" $g). */}}
{{- define "comet.broker.ha" -}}
{{- $global := .root.Values.broker.ha | default dict -}}
{{- $own := .group.ha | default dict -}}
{{- $slaves := int (include "comet.broker.slaves" .group) -}}
{{- $replication := $own.replication | default $global.replication | default "async" -}}
{{- $syncReplicas := int ($own.syncReplicas | default $global.syncReplicas | default 1) -}}
{{- if and (eq $slaves 0) $own.replication (eq $own.replication "sync") -}}
{{- fail (printf "brokers[%s].ha.replication is sync but the group has no slaves (brokers[%s].slaves is 0)" .group.name .group.name) -}}
{{- end -}}
{{- if and (gt $slaves 0) (eq $replication "sync") (gt $syncReplicas $slaves) -}}
{{- fail (printf "brokers[%s]: sync replication with syncReplicas %d needs at least %d slaves, the group has %d (every send would fail)" .group.name $syncReplicas $syncReplicas $slaves) -}}
{{- end -}}
{{- dict "slaves" $slaves "replication" $replication "syncReplicas" $syncReplicas | toJson -}}
{{- end -}}

{{/* The stable DNS name of a group's master pod (ordinal 0 of its StatefulSet). Call with (dict "root" $ "group" $g). */}}
{{- define "comet.broker.masterHost" -}}
{{- $name := include "comet.broker.fullname" . -}}
{{- printf "%s-0.%s.%s.svc.%s" $name $name .root.Release.Namespace .root.Values.clusterDomain -}}
{{- end -}}

{{/* What a group's master and slaves share: broker.config with the group's config merged over it, checked for the
keys the chart owns, plus broker.listen, broker-name, nameserver-addresses, store.dir and metrics. Returns YAML.
Call with (dict "root" $ "group" $g). */}}
{{- define "comet.broker.baseConfig" -}}
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
{{- $ha := get $config "ha" | default dict -}}
{{- range $key := list "listen" "advertised-address" "master-address" -}}
{{- if hasKey $ha $key -}}
{{- fail (printf "broker.config.ha.%s (or the group's config) is set by the chart from brokers[].slaves and broker.ha.port; remove it" $key) -}}
{{- end -}}
{{- end -}}
{{- if hasKey $ha "secret" -}}
{{- fail "broker.config.ha.secret (or the group's config): the secret never goes into a ConfigMap; use broker.ha.existingSecret, or let the chart generate one" -}}
{{- end -}}
{{- range $key := list "replication" "sync-replicas" -}}
{{- if hasKey $ha $key -}}
{{- fail (printf "broker.config.ha.%s (or the group's config) is set by the chart; use broker.ha.%s or brokers[].ha.%s" $key (ternary "replication" "syncReplicas" (eq $key "replication")) (ternary "replication" "syncReplicas" (eq $key "replication"))) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $broker "listen" (printf "0.0.0.0:%d" (int $root.Values.broker.port)) -}}
{{- $_ := set $broker "broker-name" $group.name -}}
{{- $_ := set $broker "nameserver-addresses" (include "comet.nameserver.addresses" $root | fromJsonArray) -}}
{{- $_ := set $store "dir" "/var/lib/comet/store" -}}
{{- $_ := set $config "broker" $broker -}}
{{- $_ := set $config "store" $store -}}
{{- if $ha -}}
{{- $_ := set $config "ha" $ha -}}
{{- end -}}
{{- $_ := set $config "metrics" (include "comet.metrics.config" (dict "root" $root "config" $config "what" "broker.config") | fromYaml) -}}
{{- toYaml $config -}}
{{- end -}}

{{/* A group master's configuration file (docs/configuration.md, "Broker"): broker id 0, advertised by its pod DNS
name; with slaves also the HA listener, its advertised address and the replication mode. Call with (dict "root" $
"group" $g). */}}
{{- define "comet.broker.config" -}}
{{- $root := .root -}}
{{- $config := include "comet.broker.baseConfig" . | fromYaml -}}
{{- $broker := get $config "broker" -}}
{{- $port := int $root.Values.broker.port -}}
{{- $host := include "comet.broker.masterHost" . -}}
{{- $_ := set $broker "advertised-address" (printf "%s:%d" $host $port) -}}
{{- $_ := set $broker "broker-id" 0 -}}
{{- $group := include "comet.broker.ha" . | fromJson -}}
{{- if gt (int $group.slaves) 0 -}}
{{- $ha := get $config "ha" | default dict -}}
{{- $haPort := int $root.Values.broker.ha.port -}}
{{- $_ := set $ha "listen" (printf "0.0.0.0:%d" $haPort) -}}
{{- $_ := set $ha "advertised-address" (printf "%s:%d" $host $haPort) -}}
{{- $_ := set $ha "replication" $group.replication -}}
{{- if eq $group.replication "sync" -}}
{{- $_ := set $ha "sync-replicas" (int $group.syncReplicas) -}}
{{- end -}}
{{- $_ := set $config "ha" $ha -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/* The configuration file shared by a group's slaves: the master's, with ha.master-address (the master pod's DNS
name and HA port) instead of the master-only keys. broker.broker-id and broker.advertised-address differ per pod
and come from the environment (COMET_BROKER_BROKER_ID = the pod's ordinal, COMET_BROKER_ADVERTISED_ADDRESS = its
DNS name). Call with (dict "root" $ "group" $g). */}}
{{- define "comet.broker.slave.config" -}}
{{- $config := include "comet.broker.baseConfig" . | fromYaml -}}
{{- $ha := get $config "ha" | default dict -}}
{{- $_ := set $ha "master-address" (printf "%s:%d" (include "comet.broker.masterHost" .) (int .root.Values.broker.ha.port)) -}}
{{- $_ := set $config "ha" $ha -}}
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
