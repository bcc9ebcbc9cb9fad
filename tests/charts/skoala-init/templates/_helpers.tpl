{{- define "skoala-init.labels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: skoala
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "skoala-init.certgenImage" -}}
{{- $image := .Values.gatewayApiAdmission.image -}}
{{- $registry := .Values.global.imageRegistry | default $image.registry -}}
{{- printf "%s/%s:%s" $registry $image.repository ($image.tag | default (printf "v%s" .Chart.AppVersion)) -}}
{{- end -}}
