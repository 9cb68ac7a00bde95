//! envoyproxy/ratelimit's `POST /json`: `ShouldRateLimit` with the request
//! and the response in protobuf's JSON mapping (what Go's `protojson`
//! reads and writes), for clients that cannot speak gRPC.
//!
//! Reading follows `protojson.Unmarshal`: every field by its JSON name
//! (`hitsAddend`) or its proto name (`hits_addend`), `null` for the
//! default, integers as numbers or decimal strings, enums by name or
//! number, a wrapper (`UInt64Value`) as its bare value, and an unknown
//! field is an error. Writing follows `protojson.Marshal`: camelCase names,
//! fields at their default left out, enums by name, 64-bit integers and
//! durations as strings (`"1.500s"`), `dynamicMetadata` as a plain object.
//!
//! Deciding is [`RateLimitGrpc::decide`](crate::grpc::RateLimitGrpc::decide),
//! the gRPC method's own code: this module only translates.

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit, rate_limit::Unit as ResponseUnit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::envoy::r#type::v3::RateLimitUnit;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{
    Duration as ProtoDuration, Struct, UInt64Value, Value as ProtoValue,
};
use serde_json::{Map, Value};

/// Reads a `RateLimitRequest` from its JSON form.
///
/// # Errors
/// What is wrong and where (`descriptors[0].entries[1].key: expected a
/// string`): the caller answers `400`.
pub fn decode_request(body: &[u8]) -> Result<RateLimitRequest, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let mut request = RateLimitRequest::default();
    for (name, field) in object(&value, "the request")? {
        let path = name.as_str();
        match name.as_str() {
            "domain" => request.domain = string(field, path)?,
            "descriptors" => {
                request.descriptors = array(field, path)?
                    .iter()
                    .enumerate()
                    .map(|(i, d)| descriptor(d, &format!("descriptors[{i}]")))
                    .collect::<Result<_, _>>()?;
            }
            "hitsAddend" | "hits_addend" => request.hits_addend = uint32(field, path)?,
            other => return Err(unknown(other, "the request")),
        }
    }
    Ok(request)
}

fn unknown(name: &str, place: &str) -> String {
    format!("unknown field `{name}` in {place}")
}

fn object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, String> {
    value
        .as_object()
        .ok_or_else(|| format!("{path}: expected an object"))
}

fn array<'a>(value: &'a Value, path: &str) -> Result<&'a [Value], String> {
    match value {
        Value::Null => Ok(&[]),
        Value::Array(items) => Ok(items),
        _ => Err(format!("{path}: expected an array")),
    }
}

fn string(value: &Value, path: &str) -> Result<String, String> {
    match value {
        Value::Null => Ok(String::new()),
        Value::String(text) => Ok(text.clone()),
        _ => Err(format!("{path}: expected a string")),
    }
}

/// An unsigned integer as protojson reads one: a JSON number with no
/// fraction, or a decimal string.
fn unsigned(value: &Value, path: &str, max: u64) -> Result<u64, String> {
    let number = match value {
        Value::Null => return Ok(0),
        Value::Number(n) => n.as_u64().or_else(|| {
            // 1e3 and 3.0 are integers too.
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= 9_007_199_254_740_992.0)
                .map(|f| f as u64)
        }),
        Value::String(text) => text.parse().ok(),
        _ => None,
    };
    number
        .filter(|n| *n <= max)
        .ok_or_else(|| format!("{path}: expected a whole number from 0 to {max}"))
}

fn uint32(value: &Value, path: &str) -> Result<u32, String> {
    unsigned(value, path, u64::from(u32::MAX)).map(|n| u32::try_from(n).unwrap_or(u32::MAX))
}

fn descriptor(value: &Value, path: &str) -> Result<RateLimitDescriptor, String> {
    let mut descriptor = RateLimitDescriptor::default();
    for (name, field) in object(value, path)? {
        let at = format!("{path}.{name}");
        match name.as_str() {
            "entries" => {
                descriptor.entries = array(field, &at)?
                    .iter()
                    .enumerate()
                    .map(|(i, e)| entry(e, &format!("{path}.entries[{i}]")))
                    .collect::<Result<_, _>>()?;
            }
            "limit" => {
                descriptor.limit = match field {
                    Value::Null => None,
                    field => Some(limit_override(field, &at)?),
                };
            }
            "hitsAddend" | "hits_addend" => {
                descriptor.hits_addend = match field {
                    Value::Null => None,
                    field => Some(UInt64Value {
                        value: unsigned(field, &at, u64::MAX)?,
                    }),
                };
            }
            other => return Err(unknown(other, path)),
        }
    }
    Ok(descriptor)
}

fn entry(value: &Value, path: &str) -> Result<Entry, String> {
    let mut entry = Entry::default();
    for (name, field) in object(value, path)? {
        let at = format!("{path}.{name}");
        match name.as_str() {
            "key" => entry.key = string(field, &at)?,
            "value" => entry.value = string(field, &at)?,
            other => return Err(unknown(other, path)),
        }
    }
    Ok(entry)
}

fn limit_override(value: &Value, path: &str) -> Result<RateLimitOverride, String> {
    let mut limit = RateLimitOverride::default();
    for (name, field) in object(value, path)? {
        let at = format!("{path}.{name}");
        match name.as_str() {
            "requestsPerUnit" | "requests_per_unit" => {
                limit.requests_per_unit = uint32(field, &at)?;
            }
            "unit" => {
                limit.unit = match field {
                    Value::Null => 0,
                    Value::String(name) => RateLimitUnit::from_str_name(name)
                        .map(|unit| unit as i32)
                        .ok_or_else(|| format!("{at}: `{name}` is not a RateLimitUnit"))?,
                    Value::Number(n) => n
                        .as_i64()
                        .and_then(|n| i32::try_from(n).ok())
                        .ok_or_else(|| format!("{at}: expected an enum number"))?,
                    _ => return Err(format!("{at}: expected a unit name or number")),
                };
            }
            other => return Err(unknown(other, path)),
        }
    }
    Ok(limit)
}

/// A `RateLimitResponse` in its JSON form, as `protojson.Marshal` writes it.
pub fn encode_response(response: &RateLimitResponse) -> Value {
    let mut out = Map::new();
    out.insert("overallCode".into(), code(response.overall_code));
    if !response.statuses.is_empty() {
        out.insert(
            "statuses".into(),
            Value::Array(response.statuses.iter().map(status).collect()),
        );
    }
    for (name, headers) in [
        ("responseHeadersToAdd", &response.response_headers_to_add),
        ("requestHeadersToAdd", &response.request_headers_to_add),
    ] {
        if !headers.is_empty() {
            out.insert(
                name.into(),
                Value::Array(headers.iter().map(header).collect()),
            );
        }
    }
    if let Some(metadata) = &response.dynamic_metadata {
        out.insert("dynamicMetadata".into(), structure(metadata));
    }
    if response.overall_code == 0 {
        // protojson leaves out an enum at 0; keep the shape the same.
        out.remove("overallCode");
    }
    Value::Object(out)
}

/// A `google.protobuf.Struct` as the JSON object it maps to.
fn structure(s: &Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), dynamic(v)))
            .collect(),
    )
}

/// A `google.protobuf.Value` as the JSON value it maps to. Numbers keep
/// their value; a whole number below 2^53 is written as protojson writes
/// it (`5`, not `5.0`), others may differ in their digits (`1e20` where
/// Go writes `100000000000000000000`). A number JSON cannot hold is
/// written as protojson writes a `double` field's (`"NaN"`, `"Infinity"`,
/// `"-Infinity"`), where Go's protojson fails the whole answer.
fn dynamic(value: &ProtoValue) -> Value {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
                // Exact: a whole number below 2^53 is an `i64`.
                Value::from(*n as i64)
            } else if n.is_nan() {
                Value::from("NaN")
            } else if n.is_infinite() {
                Value::from(if *n > 0.0 { "Infinity" } else { "-Infinity" })
            } else {
                serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number)
            }
        }
        Some(Kind::StructValue(s)) => structure(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(dynamic).collect()),
    }
}

fn code(code: i32) -> Value {
    Code::try_from(code).map_or_else(|_| Value::from(code), |c| Value::from(c.as_str_name()))
}

fn status(status: &DescriptorStatus) -> Value {
    let mut out = Map::new();
    if status.code != 0 {
        out.insert("code".into(), code(status.code));
    }
    if let Some(limit) = &status.current_limit {
        out.insert("currentLimit".into(), rate_limit(limit));
    }
    if status.limit_remaining != 0 {
        out.insert("limitRemaining".into(), status.limit_remaining.into());
    }
    if let Some(reset) = &status.duration_until_reset {
        out.insert("durationUntilReset".into(), duration(reset).into());
    }
    Value::Object(out)
}

fn rate_limit(limit: &RateLimit) -> Value {
    let mut out = Map::new();
    if !limit.name.is_empty() {
        out.insert("name".into(), limit.name.clone().into());
    }
    if limit.requests_per_unit != 0 {
        out.insert("requestsPerUnit".into(), limit.requests_per_unit.into());
    }
    if limit.unit != 0 {
        let unit = ResponseUnit::try_from(limit.unit).map_or_else(
            |_| Value::from(limit.unit),
            |u| Value::from(u.as_str_name()),
        );
        out.insert("unit".into(), unit);
    }
    Value::Object(out)
}

fn header(header: &HeaderValue) -> Value {
    let mut out = Map::new();
    if !header.key.is_empty() {
        out.insert("key".into(), header.key.clone().into());
    }
    if !header.value.is_empty() {
        out.insert("value".into(), header.value.clone().into());
    }
    Value::Object(out)
}

/// protojson's `Duration`: seconds, with 0, 3, 6 or 9 fraction digits.
fn duration(d: &ProtoDuration) -> String {
    let nanos = d.nanos.unsigned_abs();
    let sign = if d.seconds < 0 || d.nanos < 0 {
        "-"
    } else {
        ""
    };
    let seconds = d.seconds.unsigned_abs();
    if nanos == 0 {
        format!("{sign}{seconds}s")
    } else if nanos % 1_000_000 == 0 {
        format!("{sign}{seconds}.{:03}s", nanos / 1_000_000)
    } else if nanos % 1_000 == 0 {
        format!("{sign}{seconds}.{:06}s", nanos / 1_000)
    } else {
        format!("{sign}{seconds}.{nanos:09}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_camel_case_and_proto_names() {
        let request = decode_request(
            br#"{"domain":"edge","hitsAddend":2,"descriptors":[
                {"entries":[{"key":"path","value":"/a"}],"hits_addend":"5",
                 "limit":{"requestsPerUnit":3,"unit":"MINUTE"}},
                {"entries":[{"key":"k"}],"hitsAddend":0}]}"#,
        )
        .unwrap();
        assert_eq!(request.domain, "edge");
        assert_eq!(request.hits_addend, 2);
        assert_eq!(request.descriptors.len(), 2);
        let first = &request.descriptors[0];
        assert_eq!(first.entries[0].key, "path");
        assert_eq!(first.entries[0].value, "/a");
        assert_eq!(first.hits_addend.as_ref().map(|h| h.value), Some(5));
        let limit = first.limit.unwrap();
        assert_eq!(limit.requests_per_unit, 3);
        assert_eq!(limit.unit, RateLimitUnit::Minute as i32);
        assert_eq!(request.descriptors[1].entries[0].value, "");
        assert_eq!(
            request.descriptors[1].hits_addend.as_ref().map(|h| h.value),
            Some(0)
        );
    }

    #[test]
    fn every_malformed_request_says_what_is_wrong() {
        for (body, expected) in [
            (r#"{"domain":"d""#, "invalid JSON"),
            (r#"[]"#, "expected an object"),
            (r#"{"domain":1}"#, "domain: expected a string"),
            (r#"{"domain":"d","extra":1}"#, "unknown field `extra`"),
            (r#"{"descriptors":{}}"#, "descriptors: expected an array"),
            (
                r#"{"descriptors":[{"entries":[{"key":"k","other":""}]}]}"#,
                "unknown field `other` in descriptors[0].entries[0]",
            ),
            (
                r#"{"hitsAddend":-1}"#,
                "hitsAddend: expected a whole number",
            ),
            (r#"{"hitsAddend":4294967296}"#, "from 0 to 4294967295"),
            (r#"{"hitsAddend":1.5}"#, "expected a whole number"),
            (
                r#"{"descriptors":[{"limit":{"unit":"FORTNIGHT"}}]}"#,
                "`FORTNIGHT` is not a RateLimitUnit",
            ),
            (
                r#"{"descriptors":[{"hitsAddend":"x"}]}"#,
                "descriptors[0].hitsAddend: expected a whole number",
            ),
        ] {
            let error = decode_request(body.as_bytes()).expect_err(body);
            assert!(error.contains(expected), "{body}: {error}");
        }
    }

    #[test]
    fn writes_what_protojson_writes() {
        let response = RateLimitResponse {
            overall_code: Code::OverLimit as i32,
            statuses: vec![
                DescriptorStatus {
                    code: Code::OverLimit as i32,
                    current_limit: Some(RateLimit {
                        name: String::new(),
                        requests_per_unit: 3,
                        unit: ResponseUnit::Minute as i32,
                    }),
                    limit_remaining: 0,
                    duration_until_reset: Some(ProtoDuration {
                        seconds: 41,
                        nanos: 500_000_000,
                    }),
                    ..DescriptorStatus::default()
                },
                DescriptorStatus {
                    code: Code::Ok as i32,
                    ..DescriptorStatus::default()
                },
            ],
            response_headers_to_add: vec![HeaderValue {
                key: "RateLimit-Limit".into(),
                value: "3".into(),
                ..HeaderValue::default()
            }],
            ..RateLimitResponse::default()
        };
        assert_eq!(
            encode_response(&response),
            serde_json::json!({
                "overallCode": "OVER_LIMIT",
                "statuses": [
                    {
                        "code": "OVER_LIMIT",
                        "currentLimit": {"requestsPerUnit": 3, "unit": "MINUTE"},
                        "durationUntilReset": "41.500s"
                    },
                    {"code": "OK"}
                ],
                "responseHeadersToAdd": [{"key": "RateLimit-Limit", "value": "3"}]
            })
        );
        let metadata: serde_norway::Mapping = serde_norway::from_str(
            "name: svc\nweight: 3\nratio: 0.25\nbig: 1.0e30\nflag: false\nnothing: ~\nlist: [a, -2]\nnested: {x: y}\n\
             up: .inf\ndown: -.inf\nnan: .nan\n",
        )
        .unwrap();
        let metadata = crate::envoy::metadata::Metadata::from_yaml(&metadata)
            .unwrap()
            .unwrap();
        let with_metadata = RateLimitResponse {
            overall_code: Code::Ok as i32,
            dynamic_metadata: Some(metadata.fields().clone()),
            ..RateLimitResponse::default()
        };
        assert_eq!(
            encode_response(&with_metadata),
            serde_json::json!({
                "overallCode": "OK",
                "dynamicMetadata": {
                    "name": "svc",
                    "weight": 3,
                    "ratio": 0.25,
                    "big": 1.0e30,
                    "flag": false,
                    "nothing": null,
                    "list": ["a", -2],
                    "nested": {"x": "y"},
                    "up": "Infinity",
                    "down": "-Infinity",
                    "nan": "NaN"
                }
            })
        );
        let weight =
            serde_json::to_string(&encode_response(&with_metadata)["dynamicMetadata"]["weight"])
                .unwrap();
        assert_eq!(weight, "3", "a whole number has no fraction");
        assert_eq!(
            duration(&ProtoDuration {
                seconds: 1,
                nanos: 1_000
            }),
            "1.000001s"
        );
    }
}
