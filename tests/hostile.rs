//! Hostile input on every method, on SQLite and on PostgreSQL (issue 10, items 5 and 8, and
//! the suite that keeps them fixed): each field of each request, one at a time, set to an
//! extreme value — very long text, text that overflows an index, control characters,
//! injection strings, the largest and smallest integers, unknown enum numbers, NaN,
//! timestamps at the ends of time, ten thousand repeated entries — while the other fields
//! name real resources, so the value reaches the handlers and the stores. Then random
//! requests built from the descriptors (proptest). No answer may be `INTERNAL`, `UNKNOWN` or
//! `UNAVAILABLE` (every service is up), no unary call may hang, text holding a control
//! character is refused as such, and the suite stays healthy.
//!
//! The methods come from the descriptor set reflection serves: a new method is covered
//! without editing this file.

use std::time::Duration;

use postern_testkit::raw::{self, Answer, Method, Resources};
use prost_types::FieldDescriptorProto;
use prost_types::field_descriptor_proto::Type;
use tonic::Code;

/// Text values, with whether a control character makes them refused outright.
fn hostile_strings() -> Vec<(&'static str, String, bool)> {
    vec![
        ("empty", String::new(), false),
        ("100 KB", "a".repeat(100_000), false),
        ("3,000 two-byte characters", "é".repeat(3_000), false),
        ("NUL", "x\0y".to_owned(), true),
        ("escape sequence", "\u{1b}[31mred".to_owned(), true),
        ("C1 control", "next\u{85}line".to_owned(), true),
        ("SQL", "' OR '1'='1' --".to_owned(), false),
        ("LDAP filter", "*)(uid=*))(|(uid=*".to_owned(), false),
        ("path", "../../../../etc/passwd".to_owned(), false),
        ("templates", "%s%n{{7*7}}${jndi:ldap://x}".to_owned(), false),
        ("unicode", "\u{202e}\u{fffd}\u{feff}😀".repeat(100), false),
        ("huge number", "99999999999999999999999".to_owned(), false),
        ("spaces and case", " ACME ".to_owned(), false),
    ]
}

/// The extreme values of `field`, each encoded as the field alone.
fn extremes(field: &FieldDescriptorProto) -> Vec<(String, Vec<u8>, bool)> {
    let n = field.number();
    let mut out = Vec::new();
    let one = |put: &dyn Fn(&mut Vec<u8>)| {
        let mut b = Vec::new();
        put(&mut b);
        b
    };
    match field.r#type() {
        Type::String => {
            for (what, s, control) in hostile_strings() {
                out.push((what.to_owned(), one(&|b| raw::put_len(b, n, s.as_bytes())), control));
            }
            if raw::repeated(field) {
                let many = one(&|b| (0..10_000).for_each(|i| raw::put_len(b, n, format!("x{i}").as_bytes())));
                out.push(("10,000 entries".to_owned(), many, false));
            }
        }
        Type::Bytes => {
            out.push(("100 KB of zeros".to_owned(), one(&|b| raw::put_len(b, n, &[0; 100_000])), false));
            out.push(("empty".to_owned(), one(&|b| raw::put_len(b, n, &[])), false));
        }
        Type::Double | Type::Fixed64 | Type::Sfixed64 => {
            for (what, v) in [("NaN", f64::NAN.to_bits()), ("infinity", f64::INFINITY.to_bits()), ("max", u64::MAX)] {
                out.push((what.to_owned(), one(&|b| raw::put_fixed(b, n, 1, v)), false));
            }
        }
        Type::Float | Type::Fixed32 | Type::Sfixed32 => {
            for (what, v) in [("NaN", u64::from(f32::NAN.to_bits())), ("max", u64::from(u32::MAX))] {
                out.push((what.to_owned(), one(&|b| raw::put_fixed(b, n, 5, v)), false));
            }
        }
        Type::Message => {
            out.push(("empty message".to_owned(), one(&|b| raw::put_len(b, n, &[])), false));
            let name = field.type_name();
            let mut inner = Vec::new();
            match name {
                ".google.protobuf.Timestamp" | ".google.protobuf.Duration" => {
                    for (what, v) in [("end of time", i64::MAX as u64), ("start of time", i64::MIN as u64)] {
                        inner.clear();
                        raw::put_varint_field(&mut inner, 1, v);
                        out.push((what.to_owned(), one(&|b| raw::put_len(b, n, &inner)), false));
                    }
                    inner.clear();
                    raw::put_varint_field(&mut inner, 2, u64::from(u32::MAX));
                    out.push(("4 billion nanoseconds".to_owned(), one(&|b| raw::put_len(b, n, &inner)), false));
                }
                ".google.protobuf.FieldMask" => {
                    (0..10_000).for_each(|i| raw::put_len(&mut inner, 1, format!("no_such_path_{i}").as_bytes()));
                    out.push(("10,000 paths".to_owned(), one(&|b| raw::put_len(b, n, &inner)), false));
                }
                _ => {
                    // Every string field of the message at 100 KB, every number at its maximum.
                    if let Some(message) = raw::message(name) {
                        for f in &message.field {
                            match f.r#type() {
                                Type::String => raw::put_len(&mut inner, f.number(), "b".repeat(100_000).as_bytes()),
                                Type::Int32 | Type::Int64 | Type::Uint32 | Type::Uint64 | Type::Enum => {
                                    raw::put_varint_field(&mut inner, f.number(), u64::MAX);
                                }
                                _ => {}
                            }
                        }
                        out.push((
                            "every field at its largest".to_owned(),
                            one(&|b| raw::put_len(b, n, &inner)),
                            false,
                        ));
                    }
                }
            }
        }
        _ => {
            // Varints: integers, booleans, enums.
            for (what, v) in [
                ("u64::MAX", u64::MAX),
                ("i64::MIN", i64::MIN as u64),
                ("i64::MAX", i64::MAX as u64),
                ("i32::MIN", i64::from(i32::MIN) as u64),
                ("2^40", 1 << 40),
                ("-1", u64::MAX),
            ] {
                out.push((what.to_owned(), one(&|b| raw::put_varint_field(b, n, v)), false));
            }
        }
    }
    out
}

/// Methods in the order they are tried: those that delete or revoke last (the tenant's own
/// deletion very last), so the others meet the real resources.
fn ordered(methods: &[Method]) -> Vec<Method> {
    let rank = |m: &Method| {
        let name = m.path.rsplit('/').next().unwrap_or_default();
        if name == "DeleteTenant" {
            2
        } else if ["Delete", "Revoke", "Unlink", "Disable", "Rotate", "EndSession"].iter().any(|p| name.starts_with(p))
        {
            1
        } else {
            0
        }
    };
    let mut all = methods.to_vec();
    all.sort_by_key(|m| (rank(m), m.path.clone()));
    all
}

/// How long a hostile call may take before it counts as left open: 20 s for a unary call (an
/// answer that never comes is a defect), 3 s for a stream, which may rightly stay open with
/// nothing to send (a watch from the log's end) and whose refusals come at once.
fn patience(method: &Method) -> Duration {
    Duration::from_secs(if method.server_streaming { 3 } else { 20 })
}

/// What is wrong with `answer` to a hostile request, if anything.
fn judge(method: &Method, answer: &Answer, control: bool) -> Option<String> {
    match answer {
        Answer::Open if method.server_streaming => None,
        Answer::Open => Some(format!("no answer within {} s", patience(method).as_secs())),
        Answer::Ok(_) if control => Some("accepted a control character".to_owned()),
        Answer::Ok(_) => None,
        Answer::Status(s) => {
            let reason = postern_testkit::reason(s).unwrap_or_default();
            if matches!(s.code(), Code::Internal | Code::Unknown | Code::Unavailable | Code::DataLoss) {
                return Some(format!("{:?} {reason}: {}", s.code(), s.message()));
            }
            let internal_only = s.code() == Code::PermissionDenied && reason == "INTERNAL_ONLY";
            if control && !internal_only && (s.code() != Code::InvalidArgument || reason != "CONTROL_CHARACTER") {
                return Some(format!("control character answered {:?} {reason}: {}", s.code(), s.message()));
            }
            None
        }
    }
}

async fn every_field_at_its_extremes(database_url: Option<String>) {
    let suite = postern_testkit::Suite::start_with(|s| s.database_url = database_url).await.expect("suite");
    let ch = suite.channel().await;
    let mut admin = suite.admin().await;
    let acme = Resources::create(&mut admin, "acme").await.expect("resources");
    let key = Some(postern_testkit::ADMIN_KEY);
    let mut wrong = Vec::new();
    let mut calls = 0usize;
    let mut shapes = std::collections::BTreeMap::<String, usize>::new();
    let methods = ordered(raw::methods());
    assert!(methods.len() > 50, "{} methods", methods.len());
    for method in &methods {
        let message = raw::message(&method.input).expect("input message");
        for field in &message.field {
            for (what, bytes, control) in extremes(field) {
                let mut request = acme.request(&method.input, Some(field.number()), true);
                request.extend_from_slice(&bytes);
                let answer = raw::call(&ch, &method.path, request, key, patience(method)).await;
                calls += 1;
                *shapes.entry(answer.shape()).or_default() += 1;
                if let Some(problem) = judge(method, &answer, control) {
                    wrong.push(format!("{} {}={what}: {problem}", method.path, field.name()));
                }
            }
        }
    }
    println!("{calls} hostile calls on {} methods; answers: {shapes:?}", methods.len());
    // The values reached the handlers: many were accepted, and each refusal had its reason.
    assert!(shapes.get("Ok").copied().unwrap_or_default() > 50, "{shapes:?}");
    assert!(shapes.keys().filter(|k| k.starts_with("InvalidArgument")).count() > 3, "{shapes:?}");
    assert!(wrong.is_empty(), "{} wrong answers of {calls}:\n{}", wrong.len(), wrong.join("\n"));
    healthy(&suite).await;
    suite.stop().await.expect("stop");
}

/// The suite still serves: a tenant can be created and read, and the health check is SERVING.
async fn healthy(suite: &postern_testkit::Suite) {
    let mut admin = suite.admin().await;
    admin.create_tenant("after-the-storm").await.expect("served after the hostile calls");
    let mut health = tonic_health::pb::health_client::HealthClient::new(suite.channel().await);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .expect("health")
        .into_inner()
        .status;
    assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
}

/// Every method, each field at its extremes, on SQLite.
#[tokio::test(flavor = "multi_thread")]
async fn every_field_at_its_extremes_on_sqlite() {
    every_field_at_its_extremes(None).await;
}

/// Every method, each field at its extremes, on PostgreSQL (where a NUL byte or an
/// over-long key was `INTERNAL`).
#[tokio::test(flavor = "multi_thread")]
async fn every_field_at_its_extremes_on_postgres() {
    let Some(base) = postern_testkit::peers::postgres("every_field_at_its_extremes_on_postgres") else { return };
    let db = postern_testkit::peers::TestDatabase::create(&base).await.expect("database");
    every_field_at_its_extremes(Some(db.url.clone())).await;
    db.drop_db().await.expect("drop");
}

mod random {
    //! Random requests built from the descriptors: proptest picks a method, then values for
    //! any of its fields (arbitrary Unicode text, which includes control characters, numbers
    //! across their range, nested messages left empty or filled), over the real resources.

    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    use super::*;

    #[derive(Debug, Clone)]
    enum Value {
        Text(String),
        Number(u64),
        Bytes(Vec<u8>),
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<String>().prop_map(Value::Text),
            "[a-z0-9|@._-]{0,300}".prop_map(Value::Text),
            any::<u64>().prop_map(Value::Number),
            prop::collection::vec(any::<u8>(), 0..64).prop_map(Value::Bytes),
        ]
    }

    fn encode(field: &FieldDescriptorProto, value: &Value, out: &mut Vec<u8>) {
        let n = field.number();
        match (raw::wire_type(field), value) {
            (2, Value::Text(s)) => raw::put_len(out, n, s.as_bytes()),
            // Arbitrary bytes in a message field: whatever they decode to, or refused.
            (2, Value::Bytes(b)) if field.r#type() != Type::String => raw::put_len(out, n, b),
            (2, _) => raw::put_len(out, n, b"fallback"),
            (0, Value::Number(v)) => raw::put_varint_field(out, n, *v),
            (0, _) => raw::put_varint_field(out, n, 1),
            (w @ (1 | 5), Value::Number(v)) => raw::put_fixed(out, n, w, *v),
            (w, _) => raw::put_fixed(out, n, w, 0),
        }
    }

    fn has_control(value: &Value) -> bool {
        match value {
            Value::Text(s) => s.chars().any(|c| (c.is_control() && !matches!(c, '\t' | '\n' | '\r')) || c == '\u{7f}'),
            _ => false,
        }
    }

    async fn random_requests(database_url: Option<String>) {
        let suite = postern_testkit::Suite::start_with(|s| s.database_url = database_url).await.expect("suite");
        let ch = suite.channel().await;
        let mut admin = suite.admin().await;
        let acme = Resources::create(&mut admin, "acme").await.expect("resources");
        // Deletions and revocations are left to the extremes test: here every case meets
        // the same resources.
        let methods: Vec<Method> = ordered(raw::methods())
            .into_iter()
            .filter(|m| {
                let name = m.path.rsplit('/').next().unwrap_or_default();
                !["Delete", "Revoke", "Unlink", "Rotate"].iter().any(|p| name.starts_with(p))
            })
            .collect();
        let strategy = (0..methods.len(), prop::collection::vec((any::<prop::sample::Index>(), value()), 1..6));
        let mut runner = TestRunner::new(Config { cases: 400, failure_persistence: None, ..Config::default() });
        let handle = tokio::runtime::Handle::current();
        let result = tokio::task::block_in_place(|| {
            runner.run(&strategy, |(m, values)| {
                let method = &methods[m];
                let message = raw::message(&method.input).expect("input message");
                if message.field.is_empty() {
                    return Ok(());
                }
                let mut request = acme.request(&method.input, None, true);
                let mut control = false;
                for (index, value) in &values {
                    let field = index.get(&message.field);
                    encode(field, value, &mut request);
                    control |= field.r#type() == Type::String && has_control(value);
                }
                let answer = handle.block_on(raw::call(
                    &ch,
                    &method.path,
                    request,
                    Some(postern_testkit::ADMIN_KEY),
                    patience(method),
                ));
                // A control character in a string field is refused as such, unless the
                // same request breaks another rule first (a nested message that does not
                // decode): then it must still be a caller's mistake.
                let verdict = judge(method, &answer, false).or_else(|| match (&answer, control) {
                    (Answer::Ok(_), true) => Some("accepted a control character".to_owned()),
                    _ => None,
                });
                prop_assert!(verdict.is_none(), "{}: {:?} → {}", method.path, values, verdict.unwrap_or_default());
                Ok(())
            })
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        healthy(&suite).await;
        suite.stop().await.expect("stop");
    }

    /// 400 random requests on SQLite.
    #[tokio::test(flavor = "multi_thread")]
    async fn random_requests_on_sqlite() {
        random_requests(None).await;
    }

    /// 400 random requests on PostgreSQL.
    #[tokio::test(flavor = "multi_thread")]
    async fn random_requests_on_postgres() {
        let Some(base) = postern_testkit::peers::postgres("random_requests_on_postgres") else { return };
        let db = postern_testkit::peers::TestDatabase::create(&base).await.expect("database");
        random_requests(Some(db.url.clone())).await;
        db.drop_db().await.expect("drop");
    }
}
