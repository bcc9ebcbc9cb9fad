{{- define "coordinator.fullname" -}}
{{- default "skoala-fleet-coordinator" .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "coordinator.labels" -}}
app.kubernetes.io/name: skoala-fleet-coordinator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "coordinator.selector" -}}
app.kubernetes.io/name: skoala-fleet-coordinator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

