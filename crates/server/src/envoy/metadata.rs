//! Dynamic metadata in `ShouldRateLimit` answers, as envoyproxy/ratelimit
//! sends it with `RESPONSE_DYNAMIC_METADATA` (tollgate's
//! `envoy.response_dynamic_metadata`).
//!
//! Envoy's rate limit filter stores the response's `dynamic_metadata` under
//! the filter's name (`envoy.filters.http.ratelimit`), where access logs,
//! header formatters and later filters read it. The struct holds:
//!
//! - `domain`: the request's domain;
//! - `descriptors`: one struct per request descriptor, in order, with
//!   `entries` (`"key=value"` texts), `limit` (the descriptor's
//!   `RateLimitOverride` in protobuf's text form, when it has one) and
//!   `hitsAddend` (the descriptor's own, when set, 0 included);
//! - `hitsAddend`: the request's, when it is not 0;
//! - `metadata`: the configured `metadata` of every descriptor that passed,
//!   merged in request order, when there is any. A descriptor passed when
//!   its status is not `OVER_LIMIT` and its limit is not `unlimited`
//!   (envoyproxy/ratelimit sets those aside before it counts); only a
//!   configured descriptor with a limit has `metadata` to give, never an
//!   override. Merging: a key already there keeps its value (the first
//!   descriptor wins), unless both values are structs, which are merged the
//!   same way, key by key.

use std::collections::HashMap;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::r#type::v3::RateLimitUnit;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{ListValue, NullValue, Struct, Value};
use serde_norway::{Mapping, Value as Yaml};

/// A descriptor's configured `metadata`, as the protobuf `Struct` it is
/// sent as. Every number in it is finite (see [`Metadata::from_yaml`]), so
/// equality is an equivalence.
#[derive(Debug, Clone, PartialEq)]
pub struct Metadata(Struct);

impl Eq for Metadata {}

impl Metadata {
    /// The `metadata` mapping as written: `None` when it is empty (as
    /// envoyproxy/ratelimit reads it). Values are read as YAML reads them
    /// (`null`, booleans, numbers, text, lists and mappings); a key that is
    /// a number or a boolean is written as text, as envoyproxy/ratelimit
    /// does.
    ///
    /// # Errors
    /// A number that is not finite (`.inf`, `.nan`: protobuf's JSON form
    /// has no room for them), a key that is `null`, a list or a mapping,
    /// and a tagged value (`!name ...`), each with where it is.
    pub fn from_yaml(mapping: &Mapping) -> Result<Option<Metadata>, String> {
        if mapping.is_empty() {
            return Ok(None);
        }
        struct_of(mapping, "metadata").map(|s| Some(Metadata(s)))
    }

    /// The struct.
    pub fn fields(&self) -> &Struct {
        &self.0
    }
}

fn struct_of(mapping: &Mapping, at: &str) -> Result<Struct, String> {
    let mut fields = HashMap::with_capacity(mapping.len());
    for (key, value) in mapping {
        let key = match key {
            Yaml::String(s) => s.clone(),
            Yaml::Number(n) => n.to_string(),
            Yaml::Bool(b) => b.to_string(),
            _ => {
                return Err(format!(
                    "{at}: a key must be text, a number or a boolean, not {}",
                    kind_name(key)
                ));
            }
        };
        let value = value_of(value, &format!("{at}.{key}"))?;
        fields.insert(key, value);
    }
    Ok(Struct { fields })
}

fn value_of(yaml: &Yaml, at: &str) -> Result<Value, String> {
    let kind = match yaml {
        Yaml::Null => Kind::NullValue(NullValue::NullValue as i32),
        Yaml::Bool(b) => Kind::BoolValue(*b),
        Yaml::Number(n) => match n.as_f64().filter(|f| f.is_finite()) {
            Some(f) => Kind::NumberValue(f),
            None => return Err(format!("{at}: {n} is not a finite number")),
        },
        Yaml::String(s) => Kind::StringValue(s.clone()),
        Yaml::Sequence(items) => Kind::ListValue(ListValue {
            values: items
                .iter()
                .enumerate()
                .map(|(i, item)| value_of(item, &format!("{at}[{i}]")))
                .collect::<Result<_, _>>()?,
        }),
        Yaml::Mapping(m) => Kind::StructValue(struct_of(m, at)?),
        Yaml::Tagged(tagged) => {
            return Err(format!(
                "{at}: a tagged value ({}) is not supported",
                tagged.tag
            ));
        }
    };
    Ok(Value { kind: Some(kind) })
}

fn kind_name(yaml: &Yaml) -> &'static str {
    match yaml {
        Yaml::Null => "null",
        Yaml::Bool(_) => "a boolean",
        Yaml::Number(_) => "a number",
        Yaml::String(_) => "text",
        Yaml::Sequence(_) => "a list",
        Yaml::Mapping(_) => "a mapping",
        Yaml::Tagged(_) => "a tagged value",
    }
}

/// Merges `src` into `dest`: a key not in `dest` is added; a key in both
/// keeps `dest`'s value, unless both are structs, which are merged the same
/// way (envoyproxy/ratelimit's `mergeMetadata`; `dest` is always a copy,
/// never the configuration's own struct).
pub fn merge(dest: &mut Struct, src: &Struct) {
    for (key, value) in &src.fields {
        match dest.fields.get_mut(key) {
            None => {
                dest.fields.insert(key.clone(), value.clone());
            }
            Some(Value {
                kind: Some(Kind::StructValue(into)),
            }) => {
                if let Some(Kind::StructValue(from)) = &value.kind {
                    merge(into, from);
                }
            }
            Some(_) => {}
        }
    }
}

/// The answer's dynamic metadata for `request`, with `passed` the
/// configured `metadata` of the descriptors that passed, in request order
/// (see the module's documentation).
pub fn response<'a>(
    request: &RateLimitRequest,
    passed: impl IntoIterator<Item = &'a Metadata>,
) -> Struct {
    let mut fields = HashMap::with_capacity(4);
    fields.insert("domain".to_owned(), text(request.domain.clone()));
    let descriptors = request
        .descriptors
        .iter()
        .map(|d| {
            let mut out = HashMap::with_capacity(3);
            let entries = d
                .entries
                .iter()
                .map(|e| text(format!("{}={}", e.key, e.value)))
                .collect();
            out.insert("entries".to_owned(), list(entries));
            if let Some(limit) = &d.limit {
                out.insert("limit".to_owned(), text(override_text(limit)));
            }
            if let Some(hits) = &d.hits_addend {
                out.insert("hitsAddend".to_owned(), number(hits.value as f64));
            }
            structure(Struct { fields: out })
        })
        .collect();
    fields.insert("descriptors".to_owned(), list(descriptors));
    if request.hits_addend != 0 {
        fields.insert(
            "hitsAddend".to_owned(),
            number(f64::from(request.hits_addend)),
        );
    }
    let mut merged = Struct::default();
    for metadata in passed {
        merge(&mut merged, metadata.fields());
    }
    if !merged.fields.is_empty() {
        fields.insert("metadata".to_owned(), structure(merged));
    }
    Struct { fields }
}

/// A `RateLimitOverride` in protobuf's text form, as Go's `String()` writes
/// it on one line: fields at their zero value left out, the unit by name
/// (by number when it has none). Go's text form deliberately varies its
/// spacing between builds, so readers should not compare it byte for byte.
fn override_text(limit: &RateLimitOverride) -> String {
    let mut parts = Vec::with_capacity(2);
    if limit.requests_per_unit != 0 {
        parts.push(format!("requests_per_unit:{}", limit.requests_per_unit));
    }
    if limit.unit != 0 {
        match RateLimitUnit::try_from(limit.unit) {
            Ok(unit) => parts.push(format!("unit:{}", unit.as_str_name())),
            Err(_) => parts.push(format!("unit:{}", limit.unit)),
        }
    }
    parts.join(" ")
}

fn text(s: String) -> Value {
    Value {
        kind: Some(Kind::StringValue(s)),
    }
}

fn number(n: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(n)),
    }
}

fn list(values: Vec<Value>) -> Value {
    Value {
        kind: Some(Kind::ListValue(ListValue { values })),
    }
}

fn structure(s: Struct) -> Value {
    Value {
        kind: Some(Kind::StructValue(s)),
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
    use envoy_types::pb::google::protobuf::UInt64Value;

    use super::*;

    fn metadata(yaml: &str) -> Metadata {
        let mapping: Mapping = serde_norway::from_str(yaml).unwrap();
        Metadata::from_yaml(&mapping).unwrap().unwrap()
    }

    fn get<'a>(s: &'a Struct, path: &[&str]) -> Option<&'a Kind> {
        let (last, parents) = path.split_last()?;
        let mut at = s;
        for key in parents {
            match &at.fields.get(*key)?.kind {
                Some(Kind::StructValue(inner)) => at = inner,
                _ => return None,
            }
        }
        at.fields.get(*last)?.kind.as_ref()
    }

    fn string(s: &str) -> Kind {
        Kind::StringValue(s.to_owned())
    }

    #[test]
    fn yaml_becomes_a_struct_of_every_kind() {
        let m = metadata(
            "name: svc\nweight: 3\nratio: 0.5\non: true\nnothing: ~\nlist: [a, 1]\n\
             nested: {deep: {x: y}}\n7: seven\ntrue: yes-key\n",
        );
        let s = m.fields();
        assert_eq!(get(s, &["name"]), Some(&string("svc")));
        assert_eq!(get(s, &["weight"]), Some(&Kind::NumberValue(3.0)));
        assert_eq!(get(s, &["ratio"]), Some(&Kind::NumberValue(0.5)));
        // YAML 1.2: `on` as a key is text, `true` a boolean written as text.
        assert_eq!(get(s, &["on"]), Some(&Kind::BoolValue(true)));
        assert_eq!(get(s, &["nothing"]), Some(&Kind::NullValue(0)));
        assert_eq!(get(s, &["nested", "deep", "x"]), Some(&string("y")));
        assert_eq!(get(s, &["7"]), Some(&string("seven")));
        assert_eq!(get(s, &["true"]), Some(&string("yes-key")));
        let Some(Kind::ListValue(l)) = get(s, &["list"]) else {
            panic!("not a list");
        };
        assert_eq!(l.values.len(), 2);
        assert_eq!(l.values[1].kind, Some(Kind::NumberValue(1.0)));
    }

    #[test]
    fn an_empty_mapping_is_no_metadata() {
        assert_eq!(Metadata::from_yaml(&Mapping::new()), Ok(None));
    }

    #[test]
    fn what_protobuf_cannot_carry_is_refused_with_where_it_is() {
        for (yaml, expected) in [
            ("a: {b: .inf}", "metadata.a.b: .inf is not a finite number"),
            ("a: [1, .nan]", "metadata.a[1]: .nan is not a finite number"),
            (
                "? [1, 2]\n: x",
                "metadata: a key must be text, a number or a boolean, not a list",
            ),
            (
                "~: x",
                "metadata: a key must be text, a number or a boolean, not null",
            ),
            (
                "a: !thing x",
                "metadata.a: a tagged value (!thing) is not supported",
            ),
        ] {
            let mapping: Mapping = serde_norway::from_str(yaml).unwrap();
            assert_eq!(
                Metadata::from_yaml(&mapping),
                Err(expected.to_owned()),
                "{yaml}"
            );
        }
    }

    #[test]
    fn merging_keeps_the_first_value_and_merges_structs() {
        let mut dest = metadata("name: first\nlimits: {a: 1}\nscalar: 1\n")
            .fields()
            .clone();
        merge(
            &mut dest,
            metadata("name: second\nlimits: {a: 2, b: 3}\nscalar: {x: 1}\nnew: n\n").fields(),
        );
        assert_eq!(get(&dest, &["name"]), Some(&string("first")));
        assert_eq!(get(&dest, &["limits", "a"]), Some(&Kind::NumberValue(1.0)));
        assert_eq!(get(&dest, &["limits", "b"]), Some(&Kind::NumberValue(3.0)));
        assert_eq!(get(&dest, &["scalar"]), Some(&Kind::NumberValue(1.0)));
        assert_eq!(get(&dest, &["new"]), Some(&string("n")));
    }

    #[test]
    fn merging_never_changes_the_configured_struct() {
        let first = metadata("limits: {a: 1}\n");
        let second = metadata("limits: {b: 2}\n");
        let before = first.clone();
        let once = response(&request(), [&first, &second]);
        assert_eq!(first, before);
        let again = response(&request(), [&first, &second]);
        assert_eq!(once, again);
        assert_eq!(
            get(&once, &["metadata", "limits", "b"]),
            Some(&Kind::NumberValue(2.0))
        );
    }

    fn request() -> RateLimitRequest {
        RateLimitRequest {
            domain: "edge".into(),
            descriptors: vec![
                RateLimitDescriptor {
                    entries: vec![
                        Entry {
                            key: "path".into(),
                            value: "/a".into(),
                        },
                        Entry {
                            key: "user".into(),
                            value: String::new(),
                        },
                    ],
                    ..RateLimitDescriptor::default()
                },
                RateLimitDescriptor {
                    entries: vec![Entry {
                        key: "k".into(),
                        value: "v".into(),
                    }],
                    limit: Some(RateLimitOverride {
                        requests_per_unit: 10,
                        unit: RateLimitUnit::Second as i32,
                    }),
                    hits_addend: Some(UInt64Value { value: 0 }),
                },
            ],
            hits_addend: 0,
        }
    }

    #[test]
    fn the_response_names_the_request_and_its_descriptors() {
        let s = response(&request(), []);
        assert_eq!(get(&s, &["domain"]), Some(&string("edge")));
        assert_eq!(get(&s, &["hitsAddend"]), None, "0 is left out");
        assert_eq!(get(&s, &["metadata"]), None, "nothing passed with metadata");
        let Some(Kind::ListValue(descriptors)) = get(&s, &["descriptors"]) else {
            panic!("no descriptors");
        };
        let structs: Vec<&Struct> = descriptors
            .values
            .iter()
            .map(|v| match &v.kind {
                Some(Kind::StructValue(s)) => s,
                other => panic!("{other:?}"),
            })
            .collect();
        let Some(Kind::ListValue(entries)) = get(structs[0], &["entries"]) else {
            panic!("no entries");
        };
        let entries: Vec<_> = entries.values.iter().map(|v| v.kind.clone()).collect();
        assert_eq!(entries, [Some(string("path=/a")), Some(string("user="))]);
        assert_eq!(get(structs[0], &["limit"]), None);
        assert_eq!(get(structs[0], &["hitsAddend"]), None);
        assert_eq!(
            get(structs[1], &["limit"]),
            Some(&string("requests_per_unit:10 unit:SECOND"))
        );
        assert_eq!(
            get(structs[1], &["hitsAddend"]),
            Some(&Kind::NumberValue(0.0))
        );

        let mut with_hits = request();
        with_hits.hits_addend = 5;
        let s = response(&with_hits, []);
        assert_eq!(get(&s, &["hitsAddend"]), Some(&Kind::NumberValue(5.0)));
    }

    #[test]
    fn an_override_is_written_as_protobufs_text_form() {
        let text = |requests_per_unit, unit| {
            override_text(&RateLimitOverride {
                requests_per_unit,
                unit,
            })
        };
        assert_eq!(
            text(3, RateLimitUnit::Minute as i32),
            "requests_per_unit:3 unit:MINUTE"
        );
        assert_eq!(text(0, RateLimitUnit::Hour as i32), "unit:HOUR");
        assert_eq!(text(4, 0), "requests_per_unit:4");
        assert_eq!(text(4, 99), "requests_per_unit:4 unit:99");
    }
}
