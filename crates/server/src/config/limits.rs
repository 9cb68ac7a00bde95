//! Bounds on configuration text, checked before it is deserialized.
//!
//! The parser (libyaml, through `serde_norway`) reads a whole document
//! before the deserializer's own recursion limit can refuse it, and its
//! time grows with the square of the nesting depth of flow collections
//! (`[[[[...` or `{a: {a: ...`): 25 000 levels take about a second, 100 000
//! about 16 s. So the depth is measured first, in one linear pass that
//! reads the text as the parser's scanner does ([`scan`]), and the size of
//! every file is bounded before it is read.
//!
//! The deserializer then replays an anchored node wherever an alias names
//! it, so a few kilobytes naming one anchor of N nodes M times cost N·M
//! time and memory (`serde_norway` bounds only the number of aliases
//! followed, not the nodes each replays). So the nodes are counted first,
//! aliases expanded, by a pass that stops at [`MAX_CONFIG_NODES`].

use std::cell::Cell;
use std::fmt;
use std::ops::ControlFlow;
use std::path::Path;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

use super::ConfigError;

mod scan;

/// The largest configuration file read, in bytes (4 MiB). tollgate and
/// envoyproxy/ratelimit files are a few KiB; 4 MiB holds tens of thousands
/// of descriptors.
pub const MAX_CONFIG_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// The most bytes read for one configuration, all files together (16 MiB):
/// a directory of many envoyproxy/ratelimit domains fits with room.
pub const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;

/// The deepest nesting of flow collections (`[...]`, `{...}`) accepted. A
/// configuration written entirely in flow style (JSON is YAML) nests two
/// levels per descriptor level, so 64 leaves room for about 30 descriptor
/// levels; at this depth parsing costs nothing.
pub const MAX_NESTING_DEPTH: usize = 64;

/// The most YAML nodes (scalars, sequences, mappings; keys included) one
/// configuration document may hold, counted with every alias (`*name`)
/// expanded where it is used: 1 048 576. The largest real file, 4 MiB
/// ([`MAX_CONFIG_FILE_BYTES`]) of 36 000 block-style descriptors, holds
/// about 400 000; no file of that size holds more than about two million
/// without aliases (`[x,x,...]`). Past the cap, aliases could make a 15 KB
/// file cost gigabytes; at it, the count takes about 0.1 s and the
/// document, read, about 100 MB.
pub const MAX_CONFIG_NODES: usize = 1 << 20;

/// Reads `path` as text if it is a regular file no larger than
/// [`MAX_CONFIG_FILE_BYTES`] and what is left of `budget` (bytes still
/// allowed for this configuration), which it then reduces. Read by
/// [`read_regular`](super::files::read_regular): never blocks on a FIFO,
/// and never reads more than one byte past the cap, whatever the file
/// claims or becomes.
pub(super) fn read_bounded(path: &Path, budget: &mut u64) -> Result<String, ConfigError> {
    use super::files::{ReadError, read_regular};
    let io = |source| ConfigError::Io {
        path: path.to_owned(),
        source,
    };
    let cap = MAX_CONFIG_FILE_BYTES.min(*budget);
    let too_large = |len: u64| {
        let file = path.display().to_string();
        if cap < MAX_CONFIG_FILE_BYTES {
            ConfigError::invalid(
                &file,
                format!(
                    "this file takes the configuration's files above the \
                     {MAX_CONFIG_BYTES}-byte limit for all files together \
                     ({len} bytes, {budget} left)",
                    budget = *budget
                ),
            )
        } else {
            ConfigError::invalid(&file, size_message(len))
        }
    };
    let bytes = read_regular(path, cap).map_err(|error| match error {
        ReadError::Io(source) => io(source),
        ReadError::TooLarge(len) => too_large(len),
    })?;
    *budget -= bytes.len() as u64;
    String::from_utf8(bytes).map_err(|e| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text: {e}"),
        ))
    })
}

fn size_message(len: u64) -> String {
    format!(
        "{len} bytes, larger than the {MAX_CONFIG_FILE_BYTES}-byte limit for one \
         configuration file; refused before parsing"
    )
}

/// Refuses `text` if it is larger than [`MAX_CONFIG_FILE_BYTES`], nests
/// flow collections deeper than [`MAX_NESTING_DEPTH`] (the error names the
/// line and column of the first collection too deep), or holds more than
/// [`MAX_CONFIG_NODES`] nodes once its aliases are expanded (the error
/// names where the count passed it). Each check bounds the cost of the
/// next: the nodes are counted by the parser, which runs only on text of
/// bounded depth.
///
/// The count also meets the YAML errors the parser would (a syntax error,
/// an unknown alias, nesting deeper than the deserializer's 128 levels),
/// and refuses them as the parse would.
pub(super) fn check_text(text: &str, file: &str) -> Result<(), ConfigError> {
    check_text_within(text, file, &NodeBudget::new())
}

/// The nodes still allowed: [`MAX_CONFIG_NODES`] for one document, or
/// shared by every file of a configuration ([`check_files`]).
pub(super) struct NodeBudget(Cell<usize>);

impl NodeBudget {
    pub(super) fn new() -> NodeBudget {
        NodeBudget(Cell::new(MAX_CONFIG_NODES))
    }
}

/// [`check_text`] of every file of one configuration, `(name, text)`,
/// their nodes counted against one [`MAX_CONFIG_NODES`] together: each
/// file is also parsed on its own, but many files each under the cap
/// would otherwise add up to any number of nodes (100 files of 1.1 KB of
/// aliases took 15 s to read; 12 of them, 1.5 GB once read).
pub(super) fn check_files<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), ConfigError> {
    let budget = NodeBudget::new();
    for (file, text) in files {
        check_text_within(text, file, &budget)?;
    }
    Ok(())
}

fn check_text_within(text: &str, file: &str, budget: &NodeBudget) -> Result<(), ConfigError> {
    if text.len() as u64 > MAX_CONFIG_FILE_BYTES {
        return Err(ConfigError::invalid(file, size_message(text.len() as u64)));
    }
    if let Some((line, column)) = too_deep(text, MAX_NESTING_DEPTH) {
        return Err(ConfigError::Invalid {
            file: file.to_owned(),
            line: Some(line),
            column: Some(column),
            message: format!(
                "flow collections (`[`, `{{`) nested deeper than {MAX_NESTING_DEPTH} levels; \
                 refused before parsing"
            ),
        });
    }
    if text.trim().is_empty() {
        // Read as an empty document, not parsed (`parse::parse_with`):
        // whitespace the parser would refuse (a tab alone on a line) is no
        // error.
        return Ok(());
    }
    count_nodes(text, &budget.0).map_err(|e| ConfigError::from_yaml(file, &e))
}

/// Where (line, column; 1-based) a flow collection is first opened deeper
/// than `max`, if anywhere: found by [`scan`], which reads the text as the
/// parser's scanner does, in one linear pass.
fn too_deep(text: &str, max: usize) -> Option<(usize, usize)> {
    let mut found = None;
    let _ = scan::flow_collections(text, |level, mark| {
        if level > max {
            found = Some((mark.line + 1, mark.column + 1));
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    found
}

/// Counts the nodes of `text`'s first document (the one deserialized, in
/// both formats) as deserializing it meets them, every alias (`*name`)
/// replaced by what it names, and fails as soon as there are more than
/// what is `left` (which it reduces). The parser's events are read once;
/// replaying an alias costs one step per node replayed, so the count stops
/// after at most `left` steps beyond them.
fn count_nodes(text: &str, left: &Cell<usize>) -> Result<(), serde_norway::Error> {
    let Some(document) = serde_norway::Deserializer::from_str(text).next() else {
        return Ok(());
    };
    NodeCount { left }.deserialize(document)
}

/// A visitor that counts every node it is shown against what is `left`.
#[derive(Clone, Copy)]
struct NodeCount<'a> {
    left: &'a Cell<usize>,
}

impl NodeCount<'_> {
    fn one<E: de::Error>(self) -> Result<(), E> {
        match self.left.get().checked_sub(1) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => Err(E::custom(format!(
                "more than {MAX_CONFIG_NODES} YAML nodes once aliases (`*name`) are \
                 expanded (in this file, or in the configuration's files together); \
                 refused before reading them"
            ))),
        }
    }
}

impl<'de> DeserializeSeed<'de> for NodeCount<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NodeCount<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.one()
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.one()
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        self.one()
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.one()
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        self.one()
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.one()
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.one()
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<(), E> {
        self.one()
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.one()
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.one()
    }

    fn visit_some<D: Deserializer<'de>>(self, inner: D) -> Result<(), D::Error> {
        self.deserialize(inner)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, inner: D) -> Result<(), D::Error> {
        self.deserialize(inner)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        self.one()?;
        while items.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<(), A::Error> {
        self.one()?;
        while entries.next_key_seed(self)?.is_some() {
            entries.next_value_seed(self)?;
        }
        Ok(())
    }

    /// A node with a tag (`!name value`): the tag is read as a name, the
    /// value counted.
    fn visit_enum<A: EnumAccess<'de>>(self, tagged: A) -> Result<(), A::Error> {
        let (de::IgnoredAny, value) = tagged.variant()?;
        value.newtype_variant_seed(self)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn depth_error(text: &str) -> Option<(usize, usize)> {
        too_deep(text, 3)
    }

    /// Each `(text, where)`: [`depth_error`] finds the fourth level at
    /// `where`, or nowhere. Every case is checked before the assertion,
    /// which lists each that failed.
    fn assert_depths(cases: &[(&str, Option<(usize, usize)>)]) {
        let wrong: Vec<String> = cases
            .iter()
            .filter(|(text, expected)| depth_error(text) != *expected)
            .map(|(text, expected)| {
                format!(
                    "{text:?}: expected {expected:?}, got {:?}",
                    depth_error(text)
                )
            })
            .collect();
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn flow_collections_are_counted_where_they_open() {
        assert_depths(&[
            ("a: [[[1]]]\n", None),
            ("a: [[[[1]]]]\n", Some((1, 7))),
            ("a: {b: {c: {d: {e: 1}}}}\n", Some((1, 16))),
            ("[[[\n[1]]]]\n", Some((2, 1))),
            ("- - [[[[x]]]]\n", Some((1, 8))),
            ("? [[[[x]]]]\n: y\n", Some((1, 6))),
            ("a: !!seq &x [[[[1]]]]\n", Some((1, 16))),
            ("--- [[[[1]]]]\n", Some((1, 8))),
            ("{\"a\": [{\"b\": [1]}]}\n", Some((1, 14))),
            // JSON style: in a flow collection `:` needs no blank after it.
            ("{\"a\":[[[1]]]}\n", Some((1, 8))),
            // A key that is a flow collection.
            ("[[[[a]]]]: b\n", Some((1, 4))),
            // Closed collections do not add up.
            ("a: [[1], [2], [3], [[4]]]\n", None),
            (&"a: [[[1]]]\n".repeat(100), None),
        ]);
    }

    #[test]
    fn brackets_in_text_are_not_collections() {
        assert_depths(&[
            ("path: /a[[[[b\n", None),
            ("a: '[[[['\nb: \"{{{{\\\"[[[[\"\n", None),
            ("# [[[[\na: 1 # {{{{\n", None),
            (
                "a: |\n  [[[[\n  {{{{\nb: >-\n    [[[[\n\n    [[[[\nc: 1\n",
                None,
            ),
            ("- it's [[[[ fine\n", None),
            ("a: 'multi\n  line [[[[ '\n", None),
            ("a: 'it''s [[[[ '\n", None),
            ("a: \"x\\\" [[[[\" \nb: 1\n", None),
            // In block context `:` needs a blank after it: this is one
            // plain scalar after a quoted one (an error for the parser).
            ("\"a\":[[[[1]]]]\n", None),
            // A plain scalar goes on over lines indented more than its
            // block, brackets and all.
            ("a: x\n  [[[[y\n", None),
            // A block scalar's lines are text, whatever they hold.
            ("a: |\n  it's \"[[[[\n  # [[[[\nb: 1\n", None),
            ("- >2-\n    [[[[\n", None),
            // A tag's characters.
            ("a: !<tag:x,[[[[> 1\n", None),
        ]);
        assert_depths(&[
            // After the block scalar, collections count again.
            ("a: |\n  text\nb: [[[[1]]]]\n", Some((3, 7))),
            // A quote inside a flow plain scalar is text; the brackets count.
            ("a: [x'[[[y]]]]\n", Some((1, 9))),
        ]);
    }

    /// A quote opens a quoted scalar only where a token starts: inside a
    /// plain scalar (`x "`, `don't`) and in comments it is text, and the
    /// nesting after it counts. Before, the first of these files took the
    /// parser 25 s (100 000 levels) past the check.
    #[test]
    fn quotes_inside_plain_scalars_do_not_hide_nesting() {
        assert_depths(&[
            (
                "server:\n  admin_token: x \"\npolicies: [[[[1]]]]\n",
                Some((3, 14)),
            ),
            ("domain: d \"\ndescriptors: [[[[x]]]]\n", Some((2, 17))),
            ("- don't\n- [[[[x]]]]\n", Some((2, 6))),
            ("a: x 'y\nb: [[[[1]]]]\n'\n", Some((2, 7))),
            ("a: x \"\n  \"\nb: [[[[1]]]]\n", Some((3, 7))),
            // A plain scalar's next line, more indented: still text.
            ("a: x\n \"\nb: [[[[1]]]]\n", Some((3, 7))),
            // In a flow collection: a plain scalar, on one line or more.
            ("[a \"b, [[[x]]]]\n", Some((1, 10))),
            ("[a\n \"\n, [[[x]]]]\n", Some((3, 5))),
            ("{a: b 'c, d: [[[x]]]}\n", Some((1, 16))),
            // Comments.
            ("# a \"quote\na: [[[[1]]]]\n", Some((2, 7))),
            ("a: 1 # it's\nb: [[[[1]]]]\n", Some((2, 7))),
            ("a: [1, # it's\n  [[[x]]]]\n", Some((2, 5))),
        ]);
    }

    /// Lines end where the parser ends them, and a block scalar where the
    /// parser ends it: each of these hid the nesting before.
    #[test]
    fn line_breaks_and_block_scalars_end_where_the_parser_ends_them() {
        assert_depths(&[
            ("# x \"\r[[[[1]]]]\n", Some((2, 4))),
            ("# x \"\u{2028}a: [[[[1]]]]\n", Some((2, 7))),
            ("# x \"\u{85}a: [[[[1]]]]\n", Some((2, 7))),
            ("a: 'x\r\nb: [[[[1]]]]'\nc: [[[[1]]]]\n", Some((3, 7))),
            // The block scalar of `a`, in a mapping indented by 2 under
            // `- `, ends at a line indented by 2.
            ("- a: |\n   text\n  b: [[[[1]]]]\n", Some((3, 9))),
            // Its first line sets its indentation: a less indented line
            // after it ends it.
            ("a: |\n      \n  [[[[x]]]]\n", Some((3, 6))),
            ("a: |\n    x\n  [[[[x]]]]\n", Some((3, 6))),
        ]);
    }

    #[test]
    fn the_pathological_file_is_refused_in_linear_time() {
        let text = format!("policies: {}", "[".repeat(1_000_000));
        assert_eq!(too_deep(&text, 64), Some((1, 75)));
        let error = check_text(&text, "t.yaml").unwrap_err().to_string();
        assert!(
            error.starts_with("t.yaml:1:75: flow collections"),
            "{error}"
        );
        let text = format!(
            "server:\n  admin_token: x \"\npolicies: {}{}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let error = check_text(&text, "t.yaml").unwrap_err().to_string();
        assert!(
            error.starts_with("t.yaml:3:75: flow collections"),
            "{error}"
        );
    }

    fn nodes(text: &str, budget: usize) -> Result<(), String> {
        count_nodes(text, &Cell::new(budget)).map_err(|e| e.to_string())
    }

    /// The files of one configuration share the budget: each under it,
    /// together over it.
    #[test]
    fn a_configuration_s_files_share_one_node_budget() {
        let anchor = format!("a: &a [{}]\n", vec!["x"; 999].join(", "));
        let file = format!("{anchor}b: [{}]\n", vec!["*a"; 299].join(", "));
        // About 300 000 nodes each.
        check_text(&file, "one.yaml").unwrap();
        let files = [
            ("1.yaml", file.as_str()),
            ("2.yaml", &file),
            ("3.yaml", &file),
        ];
        check_files(files).unwrap();
        let files = [
            ("1.yaml", file.as_str()),
            ("2.yaml", &file),
            ("3.yaml", &file),
            ("4.yaml", &file),
        ];
        let error = check_files(files).unwrap_err().to_string();
        assert!(
            error.starts_with("4.yaml:") && error.contains("files together"),
            "{error}"
        );
    }

    #[test]
    fn nodes_are_counted_with_aliases_expanded() {
        // The mapping, two keys, the anchored sequence and its two items,
        // the second sequence, and the anchored one twice more.
        let text = "a: &a [x, y]\nb: [*a, *a]\n";
        assert_eq!(nodes(text, 13), Ok(()));
        let error = nodes(text, 12).unwrap_err();
        assert!(error.starts_with("b[1][1]: more than"), "{error}");
        // Tagged nodes, empty documents and every kind of scalar count.
        assert_eq!(nodes("a: !custom 5\nb: !!binary aGk=\nc: ~\n", 7), Ok(()));
        assert_eq!(nodes("a: [1, -1, 1.5, true, null, 1e400, x]\n", 10), Ok(()));
        assert_eq!(nodes("", 1), Ok(()));
        assert_eq!(nodes("# nothing\n", 1), Ok(()));
    }

    /// One anchor of n items named n times: n² nodes from 4n bytes. The
    /// count stops at the budget, whatever n.
    #[test]
    fn alias_expansion_is_refused_at_the_budget_quickly() {
        for n in [1025, 3000, 8000] {
            let items = vec!["x"; n].join(",");
            let aliases = vec!["*a"; n].join(",");
            let text = format!("key: &a [{items}]\nvalue: [{aliases}]\n");
            let started = Instant::now();
            let error = check_text(&text, "bomb.yaml").unwrap_err().to_string();
            let took = started.elapsed();
            assert!(
                error.starts_with("bomb.yaml:1:")
                    && error.contains(&format!(
                        ": more than {MAX_CONFIG_NODES} YAML nodes once aliases"
                    )),
                "{error}"
            );
            // 64 million nodes for n = 8000: a minute, unoptimized,
            // without the budget.
            assert!(took < Duration::from_secs(10), "{n}: {took:?}");
        }
        // Just below: accepted.
        let items = vec!["x"; 1021].join(",");
        let aliases = vec!["*a"; 1024].join(",");
        let text = format!("key: &a [{items}]\nvalue: [{aliases}]\n");
        check_text(&text, "t.yaml").unwrap();
    }

    /// The count recurses as the deserializer does: nesting past its 128
    /// levels, and an alias inside its own anchor, are refused by it, not
    /// by the stack.
    #[test]
    fn deep_block_nesting_and_recursive_aliases_are_refused() {
        let text = format!("{}x\n", "- ".repeat(10_000));
        let error = check_text(&text, "t.yaml").unwrap_err().to_string();
        assert!(error.contains("recursion limit exceeded"), "{error}");
        let error = check_text("a: &a [x, *a]\n", "t.yaml")
            .unwrap_err()
            .to_string();
        assert!(error.contains("recursion limit exceeded"), "{error}");
    }
}
