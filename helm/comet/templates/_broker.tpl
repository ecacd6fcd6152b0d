{{/* A broker StatefulSet: a group's master (role "master": one pod, broker id 0) or its slaves (role "slave":
brokers[].slaves pods, ordinals and broker ids 1..n). Both run the same container, probes, security context,
resources, volumes and grace period; they differ in configuration, environment and ports. Call with (dict "root" $
"group" $g "role" "master"|"slave" "name" <StatefulSet, Service and ConfigMap name> "config" <config text>
"selector" <selector labels> "slaves" <the group's slave count>). */}}
{{- define "comet.broker.statefulset" -}}
{{- $root := .root -}}
{{- $group := .group -}}
{{- $name := .name -}}
{{- $master := eq .role "master" -}}
{{- $replicated := gt (int .slaves) 0 -}}
{{- $b := $root.Values.broker -}}
{{- $storage := mergeOverwrite (deepCopy $b.storage) (deepCopy ($group.storage | default dict)) -}}
{{- $component := ternary "broker" "broker-slave" $master -}}
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "comet.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $component }}
    comet/broker-name: {{ $group.name }}
    comet/broker-role: {{ .role }}
spec:
  {{- if $master }}
  # The master of group {{ $group.name }} (broker id 0).
  replicas: 1
  serviceName: {{ $name }}
  podManagementPolicy: OrderedReady
  updateStrategy:
    type: {{ $b.masterUpdateStrategy | default "RollingUpdate" }}
  {{- else }}
  # The slaves of group {{ $group.name }}: pod <name>-<i> is broker id i (1..{{ .slaves }}), so a rescheduled pod keeps
  # its id, DNS name and volume; scaling adds or removes the highest ids.
  replicas: {{ .slaves }}
  ordinals:
    start: 1
  serviceName: {{ $name }}
  # Slaves do not depend on each other: start them at once. Updates still replace one at a time.
  podManagementPolicy: Parallel
  updateStrategy:
    type: RollingUpdate
  {{- end }}
  revisionHistoryLimit: 5
  persistentVolumeClaimRetentionPolicy:
    whenDeleted: Retain
    whenScaled: Retain
  selector:
    matchLabels:
      {{- toYaml .selector | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "comet.labels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ $component }}
        comet/broker-name: {{ $group.name }}
        comet/broker-role: {{ .role }}
        {{- with $b.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        checksum/config: {{ .config | sha256sum }}
        {{- with (include "comet.metricsAnnotations" $root) }}
        {{- . | nindent 8 }}
        {{- end }}
        {{- with $b.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "comet.serviceAccountName" $root }}
      automountServiceAccountToken: false
      # No Service environment variables: COMET_BROKER_A_SERVICE_HOST and the like would be read as
      # configuration overrides (COMET_<SECTION>_<KEY>) and fail start-up as unknown keys.
      enableServiceLinks: false
      terminationGracePeriodSeconds: {{ $b.terminationGracePeriodSeconds }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      affinity:
        {{- if $master }}
        {{- include "comet.affinity" (dict "affinity" $b.affinity "labels" (merge (dict "app.kubernetes.io/component" "broker") (include "comet.selectorLabels" $root | fromYaml))) | nindent 8 }}
        {{- else }}
        {{- include "comet.slaveAffinity" (dict "root" $root "group" $group) | nindent 8 }}
        {{- end }}
      {{- with $b.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $b.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: broker
          image: {{ include "comet.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: ["comet-broker", "--config", "/etc/comet/broker.yaml"]
          {{- if not $master }}
          env:
            - name: POD_NAME
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            # broker.broker-id: the pod's ordinal (1..n), set by the StatefulSet controller as a pod label.
            - name: COMET_BROKER_BROKER_ID
              valueFrom:
                fieldRef:
                  fieldPath: metadata.labels['apps.kubernetes.io/pod-index']
            # broker.advertised-address: the pod's stable DNS name.
            - name: COMET_BROKER_ADVERTISED_ADDRESS
              value: "$(POD_NAME).{{ $name }}.{{ $root.Release.Namespace }}.svc.{{ $root.Values.clusterDomain }}:{{ $b.port }}"
            {{- include "comet.ha.secretEnv" $root | nindent 12 }}
          {{- else if $replicated }}
          env:
            {{- include "comet.ha.secretEnv" $root | nindent 12 }}
          {{- end }}
          ports:
            - name: grpc
              containerPort: {{ $b.port }}
              protocol: TCP
            - name: metrics
              containerPort: {{ $root.Values.metrics.port }}
              protocol: TCP
            {{- if and $master $replicated }}
            # HA listener: the group's slaves connect here (comet-remoting, not gRPC).
            - name: ha
              containerPort: {{ $b.ha.port }}
              protocol: TCP
            {{- end }}
          # grpc.health.v1 on the gRPC port. The store is opened (and recovered) before the server answers.
          startupProbe:
            grpc:
              port: {{ $b.port }}
            periodSeconds: {{ $b.probes.periodSeconds }}
            timeoutSeconds: {{ $b.probes.timeoutSeconds }}
            failureThreshold: {{ $b.probes.startupFailureThreshold }}
          livenessProbe:
            grpc:
              port: {{ $b.port }}
            periodSeconds: {{ $b.probes.periodSeconds }}
            timeoutSeconds: {{ $b.probes.timeoutSeconds }}
            failureThreshold: {{ $b.probes.failureThreshold }}
          # comet.v1.Broker: SERVING while it accepts requests, NOT_SERVING from SIGTERM on.
          readinessProbe:
            grpc:
              port: {{ $b.port }}
              service: comet.v1.Broker
            periodSeconds: 5
            timeoutSeconds: {{ $b.probes.timeoutSeconds }}
            failureThreshold: {{ $b.probes.failureThreshold }}
          resources:
            {{- toYaml (mergeOverwrite (deepCopy $b.resources) (deepCopy ($group.resources | default dict))) | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.containerSecurityContext | nindent 12 }}
          volumeMounts:
            - name: config
              mountPath: /etc/comet
              readOnly: true
            # store.dir: CommitLog, consume queues, index, checkpoint and config/ (topics, groups, offsets).
            - name: data
              mountPath: /var/lib/comet/store
            - name: tmp
              mountPath: /tmp
      volumes:
        - name: config
          configMap:
            name: {{ $name }}
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
  volumeClaimTemplates:
    - apiVersion: v1
      kind: PersistentVolumeClaim
      metadata:
        name: data
        labels:
          {{- toYaml .selector | nindent 10 }}
      spec:
        accessModes:
          {{- toYaml $storage.accessModes | nindent 10 }}
        {{- with $storage.storageClassName }}
        storageClassName: {{ . | quote }}
        {{- end }}
        resources:
          requests:
            storage: {{ $storage.size }}
{{- end -}}

{{/* Slaves' scheduling: broker.affinity when given, else soft anti-affinity over nodes, strongest against their
own group (a slave on its master's node does not survive that node), then against every broker pod. */}}
{{- define "comet.slaveAffinity" -}}
{{- $b := .root.Values.broker -}}
{{- if $b.affinity -}}
{{- toYaml $b.affinity -}}
{{- else -}}
{{- $release := include "comet.selectorLabels" .root | fromYaml -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- toYaml (merge (dict "comet/broker-name" .group.name) $release) | nindent 12 }}
          matchExpressions:
            - key: app.kubernetes.io/component
              operator: In
              values: [broker, broker-slave]
    - weight: 50
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- toYaml $release | nindent 12 }}
          matchExpressions:
            - key: app.kubernetes.io/component
              operator: In
              values: [broker, broker-slave]
{{- end -}}
{{- end -}}
