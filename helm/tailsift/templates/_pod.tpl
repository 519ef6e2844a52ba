{{/* The pod template, shared by the Deployment and the StatefulSet. */}}
{{- define "tailsift.podTemplate" -}}
metadata:
  labels:
    {{- include "tailsift.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    # The config is read at start: a change rolls the pods. The rules are not here: they
    # reload in place.
    checksum/config: {{ include "tailsift.config" . | sha256sum }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "tailsift.serviceAccountName" . }}
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: {{ include "tailsift.terminationGracePeriodSeconds" . }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  containers:
    - name: tailsift
      image: "{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args: [run, --config, /etc/tailsift/config/tailsift.yaml]
      env:
        - name: TAILSIFT_LOG_FORMAT
          value: {{ .Values.logFormat | quote }}
        {{- with .Values.logLevel }}
        - name: RUST_LOG
          value: {{ . | quote }}
        {{- end }}
        {{- if .Values.staticMembership.enabled }}
        # Static membership: each pod's group.instance.id is its own (stable) name.
        - name: TAILSIFT_GROUP_INSTANCE_ID
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        {{- end }}
        {{- range .Values.secretEnv }}
        - name: {{ .name }}
          valueFrom:
            secretKeyRef:
              name: {{ .secretName }}
              key: {{ .key }}
        {{- end }}
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: http
          containerPort: {{ .Values.service.port }}
          protocol: TCP
      livenessProbe:
        httpGet:
          path: /healthz
          port: http
        {{- toYaml .Values.probes.liveness | nindent 8 }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: http
        {{- toYaml .Values.probes.readiness | nindent 8 }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: /etc/tailsift/config
          readOnly: true
        # A directory mount, never subPath: the kubelet swaps the files in place when the
        # ConfigMap changes, and tailsift reloads them.
        - name: rules
          mountPath: {{ .Values.rules.mountPath }}
          readOnly: true
        - name: tmp
          mountPath: /tmp
        {{- range $i, $s := .Values.secretFiles }}
        - name: secret-{{ $i }}
          mountPath: {{ $s.mountPath }}
          readOnly: true
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "tailsift.fullname" . }}
    - name: rules
      configMap:
        name: {{ include "tailsift.rulesConfigMap" . }}
    - name: tmp
      emptyDir:
        sizeLimit: 16Mi
    {{- range $i, $s := .Values.secretFiles }}
    - name: secret-{{ $i }}
      secret:
        secretName: {{ $s.secretName }}
        defaultMode: 0440
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
