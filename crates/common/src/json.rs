//! Conversions between `google.protobuf.Struct` (the contract's metadata) and JSON (the
//! store's).

use prost_types::value::Kind;
use serde_json::{Map, Number, Value};

/// How deep metadata may nest (objects and lists within each other), as in Auth0; deeper
/// would also pass what JSON parsers read back (serde_json stops at 128).
pub const MAX_DEPTH: usize = 32;

/// Whether `s` nests at most [`MAX_DEPTH`] levels; the violation's description otherwise.
pub fn check_depth(s: &prost_types::Struct) -> Result<(), String> {
    fn depth_of(v: &prost_types::Value) -> usize {
        match &v.kind {
            Some(Kind::ListValue(l)) => 1 + l.values.iter().map(depth_of).max().unwrap_or(0),
            Some(Kind::StructValue(s)) => 1 + s.fields.values().map(depth_of).max().unwrap_or(0),
            _ => 0,
        }
    }
    let depth = 1 + s.fields.values().map(depth_of).max().unwrap_or(0);
    if depth > MAX_DEPTH {
        return Err(format!("nests {depth} levels of objects and lists; at most {MAX_DEPTH} are allowed"));
    }
    Ok(())
}

/// A protobuf Struct as a JSON object.
pub fn from_struct(s: &prost_types::Struct) -> Map<String, Value> {
    s.fields.iter().map(|(k, v)| (k.clone(), from_value(v))).collect()
}

fn from_value(v: &prost_types::Value) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) => Number::from_f64(*n).map_or(Value::Null, Value::Number),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(from_value).collect()),
        Some(Kind::StructValue(s)) => Value::Object(from_struct(s)),
    }
}

/// A JSON object as a protobuf Struct.
pub fn to_struct(m: &Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct { fields: m.iter().map(|(k, v)| (k.clone(), to_value(v))).collect() }
}

fn to_value(v: &Value) -> prost_types::Value {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue { values: a.iter().map(to_value).collect() }),
        Value::Object(o) => Kind::StructValue(to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth() {
        let mut s = prost_types::Struct::default();
        for _ in 1..MAX_DEPTH {
            let inner = prost_types::Value { kind: Some(Kind::StructValue(s)) };
            s = prost_types::Struct { fields: [("a".to_owned(), inner)].into() };
        }
        assert_eq!(check_depth(&s), Ok(()));
        let list = prost_types::Value {
            kind: Some(Kind::ListValue(prost_types::ListValue {
                values: vec![prost_types::Value { kind: Some(Kind::StructValue(s.clone())) }],
            })),
        };
        let deeper = prost_types::Struct { fields: [("b".to_owned(), list)].into() };
        assert!(check_depth(&deeper).unwrap_err().contains("nests 34 levels"));
    }

    #[test]
    fn round_trip() {
        let v = serde_json::json!({"plan": "gold", "n": 3.0, "tags": ["a", true, null], "nested": {"x": 1.5}});
        let m = v.as_object().unwrap().clone();
        assert_eq!(from_struct(&to_struct(&m)), m);
    }
}
