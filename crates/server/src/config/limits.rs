//! Bounds on configuration text, checked before the YAML parser sees it.
//!
//! The parser (libyaml, through `serde_norway`) reads a whole document
//! before the deserializer's own recursion limit can refuse it, and its
//! time grows with the square of the nesting depth of flow collections
//! (`[[[[...` or `{a: {a: ...`): 25 000 levels take about a second, 100 000
//! about 16 s. So the depth is measured first, in one linear pass, and the
//! size of every file is bounded before it is read.

use std::path::Path;

use super::ConfigError;

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
    match too_deep(text.as_bytes(), MAX_NESTING_DEPTH) {
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
/// than `max`, if anywhere.
///
/// One pass over the bytes, following just enough of YAML to know which
/// `[` and `{` open a collection: every one inside a flow collection, and
/// in block context one that starts a node (at the start of a line, after
/// `- `, `? ` or `: `, or after a tag or anchor). Quoted scalars, comments
/// and block scalars (`|`, `>`) are skipped; a bracket inside a plain
/// scalar in block context (`path: /a[0]`) is text. Where the YAML is
/// malformed the count may be higher than the parser's, never lower for
/// the nesting that makes the parser slow.
fn too_deep(bytes: &[u8], max: usize) -> Option<(usize, usize)> {
    let blank = |b: u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let mut depth = 0usize;
    let mut line = 1usize;
    let mut line_start = 0usize;
    // Block context: whether the next token starts a node.
    let mut node_start = true;
    // Inside a block scalar: lines indented more than this are its text.
    let mut block_scalar: Option<usize> = None;
    let mut i = 0usize;
    while i < bytes.len() {
        if i == line_start {
            let indent = bytes[i..].iter().take_while(|b| **b == b' ').count();
            if let Some(parent) = block_scalar {
                let rest = &bytes[i + indent..];
                let empty = rest
                    .iter()
                    .take_while(|b| **b != b'\n')
                    .all(|b| matches!(b, b' ' | b'\t' | b'\r'));
                if empty || indent > parent {
                    match rest.iter().position(|b| *b == b'\n') {
                        Some(end) => {
                            i += indent + end + 1;
                            line += 1;
                            line_start = i;
                            continue;
                        }
                        None => break,
                    }
                }
                block_scalar = None;
            }
            if depth == 0 {
                node_start = true;
            }
        }
        let b = bytes[i];
        let next = bytes.get(i + 1).copied();
        let after_blank = i == 0 || blank(bytes[i - 1]);
        match b {
            b'\n' => {
                line += 1;
                i += 1;
                line_start = i;
                continue;
            }
            b' ' | b'\t' | b'\r' => {
                i += 1;
                continue;
            }
            b'#' if after_blank => {
                i = bytes[i..]
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(bytes.len(), |end| i + end);
                continue;
            }
            _ => {}
        }
        let quote_start = matches!(b, b'"' | b'\'')
            && (after_blank || matches!(bytes[i - 1], b'[' | b'{' | b',' | b':'));
        if quote_start {
            i = skip_quoted(bytes, i, &mut line, &mut line_start);
            if depth == 0 {
                node_start = false;
            }
            continue;
        }
        if depth > 0 {
            match b {
                b'[' | b'{' => {
                    depth += 1;
                    if depth > max {
                        return Some((line, i - line_start + 1));
                    }
                }
                b']' | b'}' => depth -= 1,
                _ => {}
            }
            i += 1;
            continue;
        }
        let indicator = next.is_none_or(blank);
        if node_start {
            match b {
                b'[' | b'{' => {
                    depth = 1;
                    if depth > max {
                        return Some((line, i - line_start + 1));
                    }
                }
                b'-' | b'?' | b':' if indicator => {}
                b'-' if i == line_start && bytes[i..].starts_with(b"---") => {
                    i += 3;
                    continue;
                }
                b'!' | b'&' => {
                    // A tag or an anchor: the node follows it.
                    i += bytes[i..].iter().take_while(|b| !blank(**b)).count();
                    continue;
                }
                b'|' | b'>' => {
                    block_scalar = Some(
                        bytes[line_start..]
                            .iter()
                            .take_while(|b| **b == b' ')
                            .count(),
                    );
                    i = bytes[i..]
                        .iter()
                        .position(|b| *b == b'\n')
                        .map_or(bytes.len(), |end| i + end);
                    continue;
                }
                _ => node_start = false,
            }
        } else if b == b':' && (indicator || matches!(bytes[i - 1], b'"' | b'\'')) {
            // A value follows `: `, or `:` right after a quoted key (JSON
            // style, `"a":[...]`).
            node_start = true;
        }
        i += 1;
    }
    None
}

/// The index just past the quoted scalar opening at `start`, counting the
/// lines it spans.
fn skip_quoted(bytes: &[u8], start: usize, line: &mut usize, line_start: &mut usize) -> usize {
    let quote = bytes[start];
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => {
                *line += 1;
                *line_start = i + 1;
            }
            b'\\' if quote == b'"' => i += 1,
            b'\'' if quote == b'\'' => {
                if bytes.get(i + 1) == Some(&b'\'') {
                    i += 1;
                } else {
                    return i + 1;
                }
            }
            b'"' if quote == b'"' => return i + 1,
            _ => {}
        }
        i += 1;
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_error(text: &str) -> Option<(usize, usize)> {
        too_deep(text.as_bytes(), 3)
    }

    #[test]
    fn flow_collections_are_counted_where_they_open() {
        assert_eq!(depth_error("a: [[[1]]]\n"), None);
        assert_eq!(depth_error("a: [[[[1]]]]\n"), Some((1, 7)));
        assert_eq!(depth_error("a: {b: {c: {d: {e: 1}}}}\n"), Some((1, 16)));
        assert_eq!(depth_error("[[[\n[1]]]]\n"), Some((2, 1)));
        assert_eq!(depth_error("- - [[[[x]]]]\n"), Some((1, 8)));
        assert_eq!(depth_error("? [[[[x]]]]\n: y\n"), Some((1, 6)));
        assert_eq!(depth_error("a: !!seq &x [[[[1]]]]\n"), Some((1, 16)));
        assert_eq!(depth_error("--- [[[[1]]]]\n"), Some((1, 8)));
        assert_eq!(depth_error("{\"a\": [{\"b\": [1]}]}\n"), Some((1, 14)));
        assert_eq!(depth_error("\"a\":[[[[1]]]]\n"), Some((1, 8)));
        // Closed collections do not add up.
        assert_eq!(depth_error("a: [[1], [2], [3], [[4]]]\n"), None);
        assert_eq!(depth_error(&"a: [[[1]]]\n".repeat(100)), None);
    }

    #[test]
    fn brackets_in_text_are_not_collections() {
        for text in [
            "path: /a[[[[b\n",
            "a: '[[[['\nb: \"{{{{\\\"[[[[\"\n",
            "# [[[[\na: 1 # {{{{\n",
            "a: |\n  [[[[\n  {{{{\nb: >-\n    [[[[\n\n    [[[[\nc: 1\n",
            "- it's [[[[ fine\n",
            "a: 'multi\n  line [[[[ '\n",
        ] {
            assert_eq!(depth_error(text), None, "{text}");
        }
        // After the block scalar, collections count again.
        assert_eq!(depth_error("a: |\n  text\nb: [[[[1]]]]\n"), Some((3, 7)));
        // A quote inside a flow plain scalar is text; the brackets count.
        assert_eq!(depth_error("a: [x'[[[y]]]]\n"), Some((1, 9)));
    }

    #[test]
    fn the_pathological_file_is_refused_in_linear_time() {
        let text = format!("policies: {}", "[".repeat(1_000_000));
        assert_eq!(too_deep(text.as_bytes(), 64), Some((1, 75)));
        let error = check_text(&text, "t.yaml").unwrap_err().to_string();
        assert!(
            error.starts_with("t.yaml:1:75: flow collections"),
            "{error}"
        );
    }
}
