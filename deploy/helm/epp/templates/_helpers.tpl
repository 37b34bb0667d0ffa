{{/* The EPP's name: <release>-epp (the reference chart's naming). */}}
{{- define "epp.name" -}}
{{- printf "%s-epp" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "epp.labels" -}}
app.kubernetes.io/name: {{ include "epp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "epp.selectorLabels" -}}
inferencepool: {{ include "epp.name" . }}
{{- end -}}

{{- define "epp.image" -}}
{{- $i := .Values.inferenceExtension.image -}}
{{- if $i.hub }}{{ printf "%s/%s:%s" $i.hub $i.name $i.tag }}{{ else }}{{ printf "%s:%s" $i.name $i.tag }}{{ end -}}
{{- end -}}

{{- define "epp.leaderElection" -}}
{{- if and (gt (int .Values.inferenceExtension.replicas) 1) (ne (default "leader-election" .Values.inferenceExtension.haMode) "active-active") }}true{{ end -}}
{{- end -}}

{{/* Every replica ready and serving, no Lease (docs/ha.md). */}}
{{- define "epp.activeActive" -}}
{{- if eq (default "leader-election" .Values.inferenceExtension.haMode) "active-active" }}true{{ end -}}
{{- end -}}
