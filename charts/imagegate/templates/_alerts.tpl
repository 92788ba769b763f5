{{/*
The alerting rules of the PrometheusRule (prometheusrule.yaml adds runbook_url, alertLabels and
drops disabledAlerts). docs/operations.md#alerts explains each alert and what to do about it.

Every imagegate series is selected by the release's namespace (the label a ServiceMonitor or
PodMonitor adds), so two releases never alert on each other's replicas. Prometheus's own template
syntax in annotations is escaped from Helm as {{`{{ ... }}`}}.

To add an alert (for a new metric, say):
  1. add the rule to the group it needs (group "imagegate" when it reads only imagegate's
     metrics), with a severity label and summary/description annotations;
  2. add its name to the enum of metrics.prometheusRule.disabledAlerts in values.schema.json;
  3. add test cases to tests/data/prometheus/alerts.test.yaml: one where it fires and one that
     looks alike where it must not;
  4. add a section "#### <AlertName>" under "Alerts" in docs/operations.md (its runbook);
  5. if the metric is new, add a panel to dashboards/imagegate.json and describe it under
     "Dashboard" in docs/operations.md, and make exercise() in tests/monitoring.rs count it
     (or, for a family `imagegate serve` never counts, such as one only `imagegate run` sets,
     list it in NOT_COUNTED_BY_SERVE there).
tests/monitoring.rs fails until every step is done, and runs promtool on the result.
*/}}
{{- define "imagegate.alertRules" -}}
{{- $s := printf "namespace=%q" .Release.Namespace -}}
{{- $t := .Values.metrics.prometheusRule.thresholds -}}
{{- /* The replica an alert is about: its Pod's name where the scrape adds one. */ -}}
{{- $replica := `{{ with $labels.pod }}{{ . }}{{ else }}{{ $labels.instance }}{{ end }}` -}}
groups:
  - name: imagegate
    rules:
      - alert: ImagegateMetricsAbsent
        expr: |-
          absent(imagegate_policies{ {{- $s -}} })
        for: 15m
        labels:
          severity: warning
        annotations:
          summary: "No imagegate metrics from namespace {{`{{ $labels.namespace }}`}}"
          description: >-
            Prometheus has scraped no imagegate replica in namespace
            {{`{{ $labels.namespace }}`}} for 15 minutes, so no other imagegate alert can fire. Either imagegate is not running or Prometheus
            does not scrape it.

      - alert: ImagegateReplicasDown
        expr: |-
          count by (namespace) (imagegate_policies{ {{- $s -}} }) < {{ .Values.replicaCount }}
        for: 15m
        labels:
          severity: warning
        annotations:
          summary: "Only {{`{{ $value }}`}} of {{ .Values.replicaCount }} imagegate replicas are running"
          description: >-
            Prometheus has scraped {{`{{ $value }}`}} imagegate replicas in namespace
            {{`{{ $labels.namespace }}`}} for 15 minutes, fewer than the {{ .Values.replicaCount }}
            the release runs. Fewer replicas carry every admission call; with none left and
            failurePolicy Fail, no Pod can be created.

      - alert: ImagegateWebhookSlow
        expr: |-
          histogram_quantile(0.99,
            sum by (namespace, endpoint, le) (rate(imagegate_request_duration_seconds_bucket{ {{- $s -}} }[5m]))
          ) > {{ $t.latencyP99Seconds }}
        for: 10m
        labels:
          severity: warning
        annotations:
          summary: "imagegate answers {{`{{ $labels.endpoint }}`}} requests slowly (p99 {{`{{ $value | humanizeDuration }}`}})"
          description: >-
            For 10 minutes, 1 in 100 {{`{{ $labels.endpoint }}`}} requests in namespace
            {{`{{ $labels.namespace }}`}} took longer than {{`{{ $value | humanizeDuration }}`}}
            to answer (threshold {{ $t.latencyP99Seconds }}s). The API server gives up after the
            webhook's timeoutSeconds and then applies failurePolicy.

      - alert: ImagegateBadRequests
        expr: |-
          sum by (namespace, endpoint) (rate(imagegate_admissions_total{ {{- $s -}} ,result="bad_request"}[10m]))
            / sum by (namespace, endpoint) (rate(imagegate_admissions_total{ {{- $s -}} }[10m]))
          > {{ $t.badRequestRatio }}
        for: 10m
        labels:
          severity: warning
        annotations:
          summary: "{{`{{ $value | humanizePercentage }}`}} of imagegate's {{`{{ $labels.endpoint }}`}} requests are not valid reviews"
          description: >-
            For 10 minutes, {{`{{ $value | humanizePercentage }}`}} of the requests to
            /{{`{{ $labels.endpoint }}`}} in namespace {{`{{ $labels.namespace }}`}} were
            answered with HTTP 4xx because they are not reviews imagegate can read (threshold
            {{ $t.badRequestRatio }}). The API server never sends such requests: a client other
            than the API server, or an API version imagegate does not support, sends them.

      - alert: ImagegateDenialsSpike
        expr: |-
          (
            60 * sum by (namespace, policy) (rate(imagegate_decisions_total{ {{- $s -}} ,result="denied"}[15m]))
            > {{ $t.denialSpikeFactor }} * 60 * (
                sum by (namespace, policy) (rate(imagegate_decisions_total{ {{- $s -}} ,result="denied"}[15m] offset 1h))
              or
                0 * sum by (namespace, policy) (rate(imagegate_decisions_total{ {{- $s -}} ,result="denied"}[15m]))
            )
          )
          and
            60 * sum by (namespace, policy) (rate(imagegate_decisions_total{ {{- $s -}} ,result="denied"}[15m]))
            > {{ $t.denialSpikeMinPerMinute }}
        for: 5m
        labels:
          severity: warning
        annotations:
          summary: "Policy {{`{{ $labels.policy }}`}} denies {{`{{ $value | humanize }}`}} requests a minute, sharply more than an hour ago"
          description: >-
            Over the last 15 minutes ImagePolicy {{`{{ $labels.policy }}`}} denied
            {{`{{ $value | humanize }}`}} requests a minute at imagegate in namespace
            {{`{{ $labels.namespace }}`}}, more than {{ $t.denialSpikeFactor }} times as many as
            in the same 15 minutes an hour before (a policy that did not exist then counts as
            none). Either a rollout brings images the policy does not allow, or
            the policy changed and now denies what it should not.

      - alert: ImagegatePolicyNotReady
        expr: |-
          max by (namespace) (imagegate_policy_errors{ {{- $s -}} }) > 0
        for: 5m
        labels:
          severity: warning
        annotations:
          summary: "ImagePolicies that do not compile are not in force ({{`{{ $value }}`}})"
          description: >-
            imagegate in namespace {{`{{ $labels.namespace }}`}} has left ImagePolicies out of
            force for 5 minutes because they do not compile (count: {{`{{ $value }}`}}); the
            others stay in force. `kubectl get imagepolicies` shows which (READY False), and
            their status says why.

      - alert: ImagegateReplicasDisagree
        expr: |-
          count by (namespace) (count_values by (namespace) ("policies", imagegate_policies{ {{- $s -}} })) > 1
        for: 15m
        labels:
          severity: warning
        annotations:
          summary: "imagegate replicas disagree on the number of policies in force"
          description: >-
            For 15 minutes the imagegate replicas in namespace {{`{{ $labels.namespace }}`}}
            have reported {{`{{ $value }}`}} different numbers of policies in force, so the same
            request can be admitted by one replica and denied by another. A replica whose
            ImagePolicy watch fails keeps the policies it had.

      - alert: ImagegateCertificateExpiresSoon
        expr: |-
          (imagegate_certificate_not_after_timestamp_seconds{ {{- $s -}} } > 0) - time()
          < {{ $t.certificateExpiryDays }} * 86400
        for: 10m
        labels:
          severity: warning
        annotations:
          summary: "imagegate's serving certificate on {{ $replica }} expires in {{`{{ $value | humanizeDuration }}`}}"
          description: >-
            The serving certificate of imagegate replica {{ $replica }} in namespace
            {{`{{ $labels.namespace }}`}} expires in {{`{{ $value | humanizeDuration }}`}}
            (threshold {{ $t.certificateExpiryDays }} days). imagegate renews it when a third of
            its validity is left, so renewal has stopped. Once it expires the API server can no
            longer call imagegate.

      - alert: ImagegateBreakGlassUsed
        # A series is created by its first use, so a series new in the window counts as used
        # (increase() alone needs a sample before the first use); it comes first because `or`
        # keeps the left side's value where both sides have the series.
        expr: |-
          sum by (namespace, policy) (
              (imagegate_break_glass_total{ {{- $s -}} } unless imagegate_break_glass_total{ {{- $s -}} } offset 10m)
            or
              increase(imagegate_break_glass_total{ {{- $s -}} }[10m])
          ) > 0
        labels:
          severity: info
        annotations:
          summary: "Policy {{`{{ $labels.policy }}`}} honoured a break-glass exception"
          description: >-
            ImagePolicy {{`{{ $labels.policy }}`}} admitted an object despite its violations in
            the last 10 minutes because of a break-glass exception (imagegate in namespace
            {{`{{ $labels.namespace }}`}}). `kubectl describe
            imagepolicy {{`{{ $labels.policy }}`}}` lists the BreakGlass Events with ticket,
            object, requester and expiry.

      - alert: ImagegateRegistryUnavailable
        expr: |-
          60 * sum by (namespace) (rate(imagegate_signature_verifications_total{ {{- $s -}} ,result="unavailable"}[10m])) > 0
        for: 10m
        labels:
          severity: warning
        annotations:
          summary: "Signature checks cannot get answers from a registry ({{`{{ $value | humanize }}`}} a minute)"
          description: >-
            For 10 minutes imagegate in namespace {{`{{ $labels.namespace }}`}} has found
            {{`{{ $value | humanize }}`}} signature checks a minute unavailable: a registry is
            unreachable, refuses imagegate's login, answers with errors or too slowly. Images
            whose digest was not verified before are refused where a policy enforces
            verifySignatures (fail closed). The denial messages, and
            imagegate_registry_request_duration_seconds by registry and outcome, say which
            registry and what fails.

      - alert: ImagegateSignaturesStale
        expr: |-
          60 * sum by (namespace) (rate(imagegate_signature_verifications_total{ {{- $s -}} ,source="stale"}[10m])) > 0
        for: 30m
        labels:
          severity: warning
        annotations:
          summary: "Images are admitted on signature checks made before a registry became unavailable ({{`{{ $value | humanize }}`}} a minute)"
          description: >-
            For 30 minutes imagegate in namespace {{`{{ $labels.namespace }}`}} has admitted
            {{`{{ $value | humanize }}`}} signature checks a minute on verifications it made
            before their registry became unavailable (source stale). Known digests keep running
            until --signature-stale-ttl after their last verification, then are refused too:
            bring the registry back before then.

      - alert: ImagegateAuditViolations
        # Replicas audit side by side: the largest count any of them reports.
        expr: |-
          max by (namespace, policy) (imagegate_audit_violating_pods{ {{- $s -}} ,mode="Enforce"}) > 0
        for: 15m
        labels:
          severity: warning
        annotations:
          summary: "{{`{{ $value }}`}} running Pods violate Enforce policy {{`{{ $labels.policy }}`}}"
          description: >-
            For 15 minutes the audit of imagegate in namespace {{`{{ $labels.namespace }}`}} has
            found {{`{{ $value }}`}} running Pods that ImagePolicy {{`{{ $labels.policy }}`}}
            (mode Enforce) would deny. They keep running, but each is refused when it is
            created again (a rollout, a node drained, a Job retried). `kubectl get imagepolicy
            {{`{{ $labels.policy }}`}} -o yaml` lists them under status.audit.
{{- if .Values.metrics.prometheusRule.apiServerAlerts }}

  # These read the API server's metrics: what happens to the calls imagegate never sees, and
  # the ImagePolicy writes it should have seen.
  - name: imagegate-apiserver
    rules:
      - alert: ImagegateWebhookCallsFailing
        expr: |-
          60 * sum by (name) (rate(apiserver_admission_webhook_rejection_count{name=~".+\\.imagegate\\.dev",error_type!="no_error"}[5m])) > 0
        for: 5m
        labels:
          severity: critical
        annotations:
          summary: "The API server cannot get answers from {{`{{ $labels.name }}`}}: requests are refused"
          description: >-
            For 5 minutes the API server has failed to call webhook {{`{{ $labels.name }}`}}
            (timeout, connection or TLS error) and refused {{`{{ $value | humanize }}`}}
            requests a minute because of failurePolicy Fail. Pods and workloads outside the
            excluded namespaces cannot be created or changed meanwhile.

      - alert: ImagegateFailingOpen
        expr: |-
          60 * sum by (name) (rate(apiserver_admission_webhook_fail_open_count{name=~".+\\.imagegate\\.dev"}[5m])) > 0
        for: 5m
        labels:
          severity: warning
        annotations:
          summary: "Requests pass {{`{{ $labels.name }}`}} unchecked because imagegate does not answer"
          description: >-
            For 5 minutes the API server has failed to call webhook {{`{{ $labels.name }}`}} and
            admitted {{`{{ $value | humanize }}`}} requests a minute unchecked because of
            failurePolicy Ignore: images are starting that no policy has seen.

      - alert: ImagegatePolicySnapshotStale
        # A write the API server accepted 10 to 40 minutes ago, and a replica whose snapshot is
        # older than 40 minutes: it has not seen that write. A cluster whose policies do not
        # change never fires. The write counter of a kind is created by its first write, so a
        # series new in the window counts as a write (first: see ImagegateBreakGlassUsed).
        expr: |-
          (time() - imagegate_snapshot_created_timestamp_seconds{ {{- $s -}} } > 2400)
          and on ()
          (
            sum(
                (
                    apiserver_request_total{group="imagegate.dev",resource="imagepolicies",subresource="",dry_run="",verb=~"CREATE|UPDATE|PATCH|APPLY|DELETE|DELETECOLLECTION",code=~"2.."} offset 10m
                  unless
                    apiserver_request_total{group="imagegate.dev",resource="imagepolicies",subresource="",dry_run="",verb=~"CREATE|UPDATE|PATCH|APPLY|DELETE|DELETECOLLECTION",code=~"2.."} offset 40m
                )
              or
                increase(apiserver_request_total{group="imagegate.dev",resource="imagepolicies",subresource="",dry_run="",verb=~"CREATE|UPDATE|PATCH|APPLY|DELETE|DELETECOLLECTION",code=~"2.."}[30m] offset 10m)
            ) > 0
          )
        for: 5m
        labels:
          severity: warning
        annotations:
          summary: "imagegate replica {{ $replica }} has not picked up an ImagePolicy change"
          description: >-
            The API server accepted a change to an ImagePolicy between 40 and 10 minutes ago,
            but imagegate replica {{ $replica }} in namespace {{`{{ $labels.namespace }}`}}
            still decides with policies it loaded {{`{{ $value | humanizeDuration }}`}} ago:
            its ImagePolicy watch is not working.
{{- end }}
{{- end }}
