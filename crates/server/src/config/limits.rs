//! Bounds on configuration text, checked before the YAML parser sees it.
//!
//! The parser (libyaml, through `serde_norway`) reads a whole document
//! before the deserializer's own recursion limit can refuse it, and its
//! time grows with the square of the nesting depth of flow collections
//! (`[[[[...` or `{a: {a: ...`): 25 000 levels take about a second, 100 000
//! about 16 s. So the depth is measured first, in one linear pass that
//! reads the text as the parser's scanner does ([`scan`]), and the size of
//! every file is bounded before it is read.

use std::ops::ControlFlow;
use std::path::Path;

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

/// Refuses `text` if it is larger than [`MAX_CONFIG_FILE_BYTES`] or nests
/// flow collections deeper than [`MAX_NESTING_DEPTH`]: the error names the
/// line and column of the first collection too deep.
pub(super) fn check_text(text: &str, file: &str) -> Result<(), ConfigError> {
    if text.len() as u64 > MAX_CONFIG_FILE_BYTES {
        return Err(ConfigError::invalid(file, size_message(text.len() as u64)));
    }
    match too_deep(text, MAX_NESTING_DEPTH) {
        None => Ok(()),
        Some((line, column)) => Err(ConfigError::Invalid {
            file: file.to_owned(),
            line: Some(line),
            column: Some(column),
            message: format!(
                "flow collections (`[`, `{{`) nested deeper than {MAX_NESTING_DEPTH} levels; \
                 refused before parsing"
            ),
        }),
    }
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

#[cfg(test)]
mod tests {
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
}
