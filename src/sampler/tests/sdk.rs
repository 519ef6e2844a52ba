//! Traffic recorded from the OpenTelemetry SDK (`tests/data/sdk-traffic.bin`: five services,
//! each exporting with the SDK's `BatchSpanProcessor`), replayed at the times its batches were
//! exported, through the example rules, deciding on the pipeline's tick: what a user running
//! the defaults gets from real exporters' batching, queue consumers' late spans included.

use std::collections::{HashMap, HashSet};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

use super::*;
use crate::pipeline::DECIDE_TICK;

/// What the recording holds of each trace, read with the protocol's own types (not the
/// decoder under test): its spans, whether one has status `ERROR`, and its root's
/// `customer.tier`.
#[derive(Default)]
struct Recorded {
    spans: u32,
    error: bool,
    tier: Option<String>,
}

fn recorded(messages: &[(u32, &[u8])]) -> HashMap<TraceId, Recorded> {
    let mut out: HashMap<TraceId, Recorded> = HashMap::new();
    for (_, m) in messages {
        let req = ExportTraceServiceRequest::decode(*m).expect("the SDK's protobuf");
        for s in req
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
        {
            let t = out
                .entry(TraceId::from_slice(&s.trace_id).expect("id"))
                .or_default();
            t.spans += 1;
            t.error |= s.status.as_ref().is_some_and(|st| st.code == 2);
            if s.parent_span_id.is_empty() {
                t.tier = s
                    .attributes
                    .iter()
                    .find(|a| a.key == "customer.tier")
                    .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                        Value::StringValue(v) => Some(v.clone()),
                        _ => None,
                    });
            }
        }
    }
    out
}

#[tokio::test(start_paused = true)]
async fn sdk_traffic_at_its_export_times_keeps_whole_traces_late_spans_included() {
    let rules = crate::demo::embedded_rules().expect("example rules");
    let mut f = Fixture::with_set(rules, Completion::default(), Budget::default());
    let recording = crate::sdk_traffic::recording();
    let messages = crate::sdk_traffic::messages(&recording);
    let traces = recorded(&messages);

    // Per trace: the rule it was kept by, and the spans forwarded under it.
    let mut kept: HashMap<TraceId, (String, u32)> = HashMap::new();
    let mut collect = |f: &Fixture| {
        for (id, rule, spans) in f.output.take_delivered() {
            let k = kept.entry(id).or_insert_with(|| (rule.clone(), 0));
            assert_eq!(k.0, rule, "{id:?}: forwarded under one decision");
            k.1 += spans;
        }
    };
    let start = Instant::now();
    let mut late = 0;
    for (offset, (ms, m)) in messages.iter().enumerate() {
        let at = start + Duration::from_millis(u64::from(*ms));
        while Instant::now() + DECIDE_TICK <= at {
            tokio::time::advance(DECIDE_TICK).await;
            f.sampler.decide_due(Instant::now());
            collect(&f);
        }
        tokio::time::advance(at - Instant::now()).await;
        let s = f.ingest(offset as i64, m, false);
        late += s.late_kept + s.late_dropped;
        collect(&f);
    }
    tokio::time::advance(Duration::from_secs(120)).await;
    f.sampler.decide_due(Instant::now());
    collect(&f);
    assert_eq!(f.sampler.buffered_traces(), 0);

    // The recording is what it says: queue consumers' spans (and callees' exported a round
    // of batches after their callers) arrive after their trace was decided.
    assert!(
        late > 0,
        "no span of the recording arrived after its trace's decision"
    );
    assert!(traces.len() >= 100 && traces.values().any(|t| t.error));
    let mut by_rule: HashMap<&str, usize> = HashMap::new();
    for (id, t) in &traces {
        match kept.get(id) {
            // Kept: every span forwarded, with the trace or after it under its decision.
            Some((rule, spans)) => {
                assert_eq!(*spans, t.spans, "{id:?} ({rule}): every span forwarded");
                *by_rule.entry(rule.as_str()).or_default() += 1;
                let expected: &[&str] = match (t.error, t.tier.as_deref()) {
                    (true, _) => &["errors"],
                    (false, Some("enterprise")) => &["enterprise-customers"],
                    _ => &["baseline"],
                };
                assert!(expected.contains(&rule.as_str()), "{id:?} kept by {rule}");
            }
            None => assert!(
                !t.error && t.tier.as_deref() != Some("enterprise"),
                "{id:?}: an error or enterprise trace was dropped"
            ),
        }
    }
    let unknown: HashSet<_> = kept.keys().filter(|id| !traces.contains_key(id)).collect();
    assert!(
        unknown.is_empty(),
        "forwarded traces not in the recording: {unknown:?}"
    );
    eprintln!(
        "{} traces, {} kept {by_rule:?}, {late} spans after their trace's decision",
        traces.len(),
        kept.len()
    );
}

/// The benchmarks replay the recording many times over (`sdk_traffic::replayed`): each replay
/// must be new traces of the recording's shape, or they would measure late spans of decided
/// traces, or traces larger than recorded.
#[test]
fn each_replay_of_the_recording_is_new_traces_of_the_same_shape() {
    let recording = crate::sdk_traffic::recording();
    let original = crate::sdk_traffic::messages(&recording);
    // Spans a trace, and the (message, spans) it has in each message, as the decoder groups.
    let shape = |messages: &[&[u8]]| {
        let mut d = crate::otlp::decode::Decoder::new();
        let mut traces: HashMap<TraceId, Vec<(usize, usize)>> = HashMap::new();
        for (i, m) in messages.iter().enumerate() {
            d.decode(m).expect("decodes");
            for g in d.groups(m) {
                traces.entry(g.trace_id).or_default().push((i, g.len()));
            }
        }
        traces
    };
    let recorded = shape(&original.iter().map(|(_, m)| *m).collect::<Vec<_>>());
    let mut seen: HashSet<TraceId> = recorded.keys().copied().collect();
    for replay in [0, 1, 7, 1 << 40] {
        let messages = crate::sdk_traffic::replayed(&recording, replay);
        assert_eq!(messages.len(), original.len());
        let replayed = shape(&messages.iter().map(Vec::as_slice).collect::<Vec<_>>());
        assert_eq!(
            replayed.len(),
            recorded.len(),
            "replay {replay}: as many traces"
        );
        // The same trace shapes, trace for trace (the id's high half is kept).
        let mut want: Vec<_> = recorded
            .iter()
            .map(|(id, s)| (id.0[..8].to_vec(), s))
            .collect();
        let mut got: Vec<_> = replayed
            .iter()
            .map(|(id, s)| (id.0[..8].to_vec(), s))
            .collect();
        want.sort();
        got.sort();
        assert_eq!(
            got, want,
            "replay {replay}: the same traces' spans in the same batches"
        );
        if replay > 0 {
            for id in replayed.keys() {
                assert!(
                    seen.insert(*id),
                    "replay {replay}: {id:?} is not a new trace"
                );
            }
        }
    }
}
