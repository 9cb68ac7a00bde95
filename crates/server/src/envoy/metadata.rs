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
//!   same way, key by key. Unlike envoyproxy/ratelimit, the metadata of a
//!   limit with `detailed_metric` or a renaming `value_to_metric` is sent
//!   (it loses it when it rebuilds the limit), and merging never writes
//!   into the configured structs (docs/ENVOY.md, "Dynamic metadata").

use std::collections::HashMap;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::r#type::v3::RateLimitUnit;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{ListValue, NullValue, Struct, Value};
use serde_norway::{Mapping, Value as Yaml};

/// A descriptor's configured `metadata`, as the protobuf `Struct` it is
/// sent as.
#[derive(Debug, Clone)]
pub struct Metadata(Struct);

/// Equal when every value is, numbers by their bits (so a `.nan` equals
/// itself and equality is an equivalence).
impl PartialEq for Metadata {
    fn eq(&self, other: &Metadata) -> bool {
        same_struct(&self.0, &other.0)
    }
}

impl Eq for Metadata {}

fn same_struct(a: &Struct, b: &Struct) -> bool {
    a.fields.len() == b.fields.len()
        && a.fields
            .iter()
            .all(|(k, v)| b.fields.get(k).is_some_and(|w| same_value(v, w)))
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (&a.kind, &b.kind) {
        (Some(Kind::NumberValue(x)), Some(Kind::NumberValue(y))) => x.to_bits() == y.to_bits(),
        (Some(Kind::StructValue(x)), Some(Kind::StructValue(y))) => same_struct(x, y),
        (Some(Kind::ListValue(x)), Some(Kind::ListValue(y))) => {
            x.values.len() == y.values.len()
                && x.values
                    .iter()
                    .zip(&y.values)
                    .all(|(v, w)| same_value(v, w))
        }
        (x, y) => x == y,
    }
}

impl Metadata {
    /// The `metadata` mapping as written, read as envoyproxy/ratelimit
    /// reads it where YAML 1.2 allows: `None` when it is empty; merge keys
    /// (`<<: *anchor`) applied; `null`, booleans, numbers (`.inf` and
    /// `.nan` included: protobuf carries them), text, lists and mappings;
    /// a tagged value (`!name ...`) as its text, or as its list or
    /// mapping; a key that is a number or a boolean as its text, and a
    /// `null` key as `""` at the top and `<nil>` below (Go's `%v`).
    ///
    /// # Errors
    /// A key that is a list or a mapping (envoyproxy/ratelimit refuses it
    /// too), and merge keys that are not mappings, each with where it is.
    pub fn from_yaml(mapping: &Mapping) -> Result<Option<Metadata>, String> {
        if mapping.is_empty() {
            return Ok(None);
        }
        let mut merged = Yaml::Mapping(mapping.clone());
        merged.apply_merge().map_err(|e| format!("metadata: {e}"))?;
        let Yaml::Mapping(mapping) = merged else {
            return Ok(None);
        };
        struct_of(&mapping, "metadata", true).map(|s| Some(Metadata(s)))
    }

    /// The struct.
    pub fn fields(&self) -> &Struct {
        &self.0
    }
}

fn struct_of(mapping: &Mapping, at: &str, top: bool) -> Result<Struct, String> {
    let mut fields = HashMap::with_capacity(mapping.len());
    for (key, value) in mapping {
        let key = match key {
            Yaml::String(s) => s.clone(),
            Yaml::Number(n) => number_text(n),
            Yaml::Bool(b) => b.to_string(),
            Yaml::Null if top => String::new(),
            Yaml::Null => "<nil>".to_owned(),
            _ => {
                return Err(format!(
                    "{at}: a key must be text, a number, a boolean or null, not {}",
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
        // Every YAML number has an `f64` (integers round, as Go's do).
        Yaml::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Yaml::String(s) => Kind::StringValue(s.clone()),
        Yaml::Sequence(items) => Kind::ListValue(ListValue {
            values: items
                .iter()
                .enumerate()
                .map(|(i, item)| value_of(item, &format!("{at}[{i}]")))
                .collect::<Result<_, _>>()?,
        }),
        Yaml::Mapping(m) => Kind::StructValue(struct_of(m, at, false)?),
        // Go's YAML leaves a scalar with a tag it does not know as text.
        Yaml::Tagged(tagged) => match &tagged.value {
            Yaml::Null => Kind::StringValue(String::new()),
            Yaml::Bool(b) => Kind::StringValue(b.to_string()),
            Yaml::Number(n) => Kind::StringValue(number_text(n)),
            inner => return value_of(inner, at),
        },
    };
    Ok(Value { kind: Some(kind) })
}

/// A number as text: an integer as its digits, a whole float below 1e21
/// without a fraction (`1e3` is `1000`), any other float as Rust writes
/// it.
fn number_text(n: &serde_norway::Number) -> String {
    if n.is_i64() || n.is_u64() {
        return n.to_string();
    }
    match n.as_f64() {
        Some(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e21 => format!("{f:.0}"),
        Some(f) => f.to_string(),
        None => n.to_string(),
    }
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
            "name: svc\nweight: 3\nratio: 0.5\nflag: yes\nreal: true\nnothing: ~\nlist: [a, 1]\n\
             nested: {deep: {x: y}, ~: n}\n7: seven\n1e3: thousand\ntrue: t\n~: top\n\
             tagged: !custom 5\ntagged_map: !custom {k: v}\nhuge: .inf\n",
        );
        let s = m.fields();
        assert_eq!(get(s, &["name"]), Some(&string("svc")));
        assert_eq!(get(s, &["weight"]), Some(&Kind::NumberValue(3.0)));
        assert_eq!(get(s, &["ratio"]), Some(&Kind::NumberValue(0.5)));
        // YAML 1.2: `yes` is text; only `true` and `false` are booleans.
        assert_eq!(get(s, &["flag"]), Some(&string("yes")));
        assert_eq!(get(s, &["real"]), Some(&Kind::BoolValue(true)));
        assert_eq!(get(s, &["nothing"]), Some(&Kind::NullValue(0)));
        assert_eq!(get(s, &["nested", "deep", "x"]), Some(&string("y")));
        // Keys that are not text are written as Go's YAML reading does.
        assert_eq!(get(s, &["7"]), Some(&string("seven")));
        assert_eq!(get(s, &["1000"]), Some(&string("thousand")));
        assert_eq!(get(s, &["true"]), Some(&string("t")));
        assert_eq!(get(s, &[""]), Some(&string("top")));
        assert_eq!(get(s, &["nested", "<nil>"]), Some(&string("n")));
        // An unknown tag leaves a scalar as text.
        assert_eq!(get(s, &["tagged"]), Some(&string("5")));
        assert_eq!(get(s, &["tagged_map", "k"]), Some(&string("v")));
        assert_eq!(get(s, &["huge"]), Some(&Kind::NumberValue(f64::INFINITY)));
        let Some(Kind::ListValue(l)) = get(s, &["list"]) else {
            panic!("not a list");
        };
        assert_eq!(l.values.len(), 2);
        assert_eq!(l.values[1].kind, Some(Kind::NumberValue(1.0)));
    }

    #[test]
    fn merge_keys_are_applied() {
        let m = metadata("base: &base {tier: gold, region: eu}\nplan: {<<: *base, region: us}\n");
        assert_eq!(get(m.fields(), &["plan", "tier"]), Some(&string("gold")));
        assert_eq!(get(m.fields(), &["plan", "region"]), Some(&string("us")));
        assert_eq!(get(m.fields(), &["plan", "<<"]), None);
    }

    #[test]
    fn equality_is_an_equivalence_even_with_nan() {
        let a = metadata("x: .nan\ny: [1, {z: .inf}]\n");
        assert_eq!(a, a.clone());
        assert_ne!(a, metadata("x: .nan\ny: [1, {z: -.inf}]\n"));
        assert_ne!(a, metadata("x: .nan\n"));
    }

    #[test]
    fn an_empty_mapping_is_no_metadata() {
        assert_eq!(Metadata::from_yaml(&Mapping::new()), Ok(None));
    }

    #[test]
    fn keys_that_are_lists_or_mappings_are_refused_with_where_they_are() {
        for (yaml, expected) in [
            (
                "? [1, 2]\n: x",
                "metadata: a key must be text, a number, a boolean or null, not a list",
            ),
            (
                "a: {? {b: 1}\n: x}",
                "metadata.a: a key must be text, a number, a boolean or null, not a mapping",
            ),
        ] {
            let mapping: Mapping = serde_norway::from_str(yaml).unwrap();
            assert_eq!(
                Metadata::from_yaml(&mapping),
                Err(expected.to_owned()),
                "{yaml}"
            );
        }
        let mapping: Mapping = serde_norway::from_str("a: {<<: 3}").unwrap();
        let error = Metadata::from_yaml(&mapping).unwrap_err();
        assert!(error.starts_with("metadata: "), "{error}");
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
