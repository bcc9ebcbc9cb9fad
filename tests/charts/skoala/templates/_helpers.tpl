{{/*
Shared pieces of the skoala components. Each takes a dict:
  root: the chart's top-level context, name: the component ("hive"), values: its values.
*/}}

{{- define "skoala.image" -}}
{{- $registry := .root.Values.global.imageRegistry | default .values.image.registry -}}
{{- $tag := .values.image.tag | default (printf "v%s" .root.Chart.AppVersion) -}}
{{- printf "%s/%s:%s" $registry .values.image.repository $tag -}}
{{- end -}}

{{- define "skoala.selectorLabels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "skoala.labels" -}}
{{ include "skoala.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: skoala
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{/* ServiceAccount, ConfigMap, Service and Deployment of one component. */}}
{{- define "skoala.component" -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ .name }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "skoala.labels" . | nindent 4 }}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .name }}-config
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "skoala.labels" . | nindent 4 }}
data:
  config.yaml: |
    logLevel: {{ .values.logLevel }}
    listen: ":{{ .values.service.port }}"
---
apiVersion: v1
kind: Service
metadata:
  name: {{ .name }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "skoala.labels" . | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "skoala.selectorLabels" . | nindent 4 }}
  ports:
    - name: http
      port: {{ .values.service.port }}
      targetPort: http
      protocol: TCP
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .name }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "skoala.labels" . | nindent 4 }}
spec:
  replicas: {{ .values.replicas }}
  selector:
    matchLabels:
      {{- include "skoala.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "skoala.selectorLabels" . | nindent 8 }}
      annotations:
        # Restart the pods when their configuration changes.
        checksum/config: {{ toYaml .values | sha256sum }}
    spec:
      serviceAccountName: {{ .name }}
      containers:
        - name: {{ .name }}
          image: {{ include "skoala.image" . }}
          args: ["--config=/etc/{{ .name }}/config.yaml"]
          env:
            - name: LOG_LEVEL
              value: {{ .values.logLevel | quote }}
            {{- if .values.database }}
            - name: DB_PASSWORD
              valueFrom:
                secretKeyRef:
                  name: {{ .name }}-database
                  key: password
            {{- end }}
          ports:
            - name: http
              containerPort: {{ .values.service.port }}
              protocol: TCP
          readinessProbe:
            httpGet:
              path: /healthz
              port: http
          volumeMounts:
            - name: config
              mountPath: /etc/{{ .name }}
      volumes:
        - name: config
          configMap:
            name: {{ .name }}-config
{{- end -}}
