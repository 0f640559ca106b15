//! Tool schemas that strict clients accept without a warning.
//!
//! schemars marks Rust integer widths with `format` values that are not in
//! the JSON Schema vocabulary (`uint64`, `uint`, `int32`, …). Clients that
//! validate schemas with Ajv in strict mode (Claude Code, Gemini CLI) print a
//! warning for each one, every start. The width says nothing to an agent;
//! the sign does: an unsigned `format` becomes `minimum: 0`, and every
//! non-standard `format` is removed.

use rmcp::model::JsonObject;
use serde_json::{Value, json};

/// The `format` values JSON Schema (2020-12) defines.
const STANDARD_FORMATS: &[&str] = &[
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uuid",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
];

/// Rewrites every subschema of `schema` in place (see the module docs).
pub fn standardize(schema: &mut JsonObject) {
    if let Some(Value::String(f)) = schema.get("format")
        && !STANDARD_FORMATS.contains(&f.as_str())
    {
        let unsigned = f.starts_with("uint");
        schema.remove("format");
        if unsigned && !schema.contains_key("minimum") {
            schema.insert("minimum".into(), json!(0));
        }
    }
    for v in schema.values_mut() {
        walk(v);
    }
}

fn walk(v: &mut Value) {
    match v {
        Value::Object(o) => standardize(o),
        Value::Array(a) => a.iter_mut().for_each(walk),
        _ => {}
    }
}

/// Whether `schema` still holds a `format` outside the standard vocabulary
/// (for tests).
pub fn has_nonstandard_format(schema: &Value) -> bool {
    match schema {
        Value::Object(o) => {
            o.get("format")
                .and_then(Value::as_str)
                .is_some_and(|f| !STANDARD_FORMATS.contains(&f))
                || o.values().any(has_nonstandard_format)
        }
        Value::Array(a) => a.iter().any(has_nonstandard_format),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;

    #[test]
    fn integer_widths_go_and_unsigned_becomes_a_minimum() {
        let mut s: JsonObject = serde_json::from_value(json!({
            "type": "object",
            "properties": {
                "a": {"type": "integer", "format": "uint64"},
                "b": {"type": ["integer", "null"], "format": "int32"},
                "c": {"type": "string", "format": "date-time"},
                "d": {"type": "array", "items": {"type": "integer", "format": "uint", "minimum": 16}},
            },
            "$defs": {"X": {"anyOf": [{"type": "number", "format": "double"}]}},
        }))
        .unwrap();
        assert!(has_nonstandard_format(&Value::Object(s.clone())));
        standardize(&mut s);
        let v = Value::Object(s);
        assert!(!has_nonstandard_format(&v), "{v}");
        assert_eq!(
            v["properties"]["a"],
            json!({"type": "integer", "minimum": 0})
        );
        assert_eq!(v["properties"]["b"], json!({"type": ["integer", "null"]}));
        assert_eq!(v["properties"]["c"]["format"], "date-time");
        assert_eq!(v["properties"]["d"]["items"]["minimum"], 16);
        assert_eq!(v["$defs"]["X"]["anyOf"][0], json!({"type": "number"}));
    }
}
