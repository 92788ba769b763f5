{{/* Name of the chart, for the app.kubernetes.io/name label. */}}
{{- define "imagegate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Base name of the release's objects: the release name when it already contains the chart's name
(`helm install imagegate ...` gives plain "imagegate"), else "<release>-<chart>".
*/}}
{{- define "imagegate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "imagegate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "imagegate.labels" -}}
helm.sh/chart: {{ include "imagegate.chart" . }}
{{ include "imagegate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: imagegate
{{- end }}

{{/* Labels that select the imagegate Pods; never change them in an upgrade. */}}
{{- define "imagegate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "imagegate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The Secret that holds the CA and the serving certificate. */}}
{{- define "imagegate.secretName" -}}
{{- default (printf "%s-tls" (include "imagegate.fullname" .)) .Values.certificates.secretName }}
{{- end }}

{{/* The ClusterRole of the operator; it also owns the webhook configurations. */}}
{{- define "imagegate.clusterRoleName" -}}
{{- include "imagegate.fullname" . }}
{{- end }}

{{/* Name of the pre-delete cleanup hook's objects. */}}
{{- define "imagegate.cleanupName" -}}
{{- printf "%s-cleanup" (include "imagegate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
repository:tag; with a digest, repository@digest (repository:tag@digest when a tag is set too:
the digest is what runs, the tag only tells people which release it is).
*/}}
{{- define "imagegate.image" -}}
{{- $img := .image -}}
{{- if and $img.digest $img.tag }}
{{- printf "%s:%s@%s" $img.repository $img.tag $img.digest }}
{{- else if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default .default $img.tag) }}
{{- end }}
{{- end }}

{{/* The parts of a cleanup hook container that every step shares. */}}
{{- define "imagegate.cleanupContainer" -}}
image: {{ .image | quote }}
imagePullPolicy: {{ .pullPolicy }}
command: ["kubectl"]
env:
  # kubectl keeps its discovery cache under $HOME/.kube; the root filesystem is read-only.
  - name: HOME
    value: /tmp
volumeMounts:
  - name: tmp
    mountPath: /tmp
{{- with .resources }}
resources:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  readOnlyRootFilesystem: true
  allowPrivilegeEscalation: false
  privileged: false
  capabilities:
    drop:
      - ALL
  seccompProfile:
    type: RuntimeDefault
{{- end }}
