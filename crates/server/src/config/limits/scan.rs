//! Where the YAML parser opens and closes flow collections, found without
//! running it: the depth check of [`super::check_text`] must run before
//! the parser, whose time grows with the square of that depth.
//!
//! This is libyaml's scanner (`unsafe-libyaml-norway`'s `scanner.rs`,
//! which `serde_norway` runs), reduced to what decides where its tokens
//! start and end: the flow level, the block indentation, whether a simple
//! key may start, and the one simple key of the block context (its column
//! becomes the indentation of a mapping). Each `fetch_*` and `scan_*` step
//! below is the function of the same name there. Where a `[` is a
//! collection, a quote opens a quoted scalar and a `#` a comment is
//! decided exactly as there: a quote inside a plain scalar (`x "`,
//! `don't`) is text, a plain scalar goes on over lines indented more than
//! its block, a block scalar (`|`, `>`) ends at the first line indented
//! less than its first line, and lines end at `\r`, `\n`, U+0085, U+2028
//! and U+2029.
//!
//! Where libyaml stops with an error this scan goes on, as if the token
//! were right: libyaml scans nothing after its first error, so what this
//! scan sees there cannot cost the parser anything; it can only make a
//! malformed file refused with another message. Before that error it sees
//! the same collections, at the same places.
//!
//! One pass: every step consumes at least one character, and none is read
//! twice.

use std::ops::ControlFlow;

/// A place in the text, as libyaml marks it: `index` in bytes, `line` and
/// `column` (in characters) from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Mark {
    pub(super) index: usize,
    pub(super) line: usize,
    pub(super) column: usize,
}

/// Calls `each` with the flow level after every `[`, `{`, `]` and `}` the
/// YAML parser's scanner reads as a collection's start or end, and where
/// it is, until `each` breaks or the text ends.
pub(super) fn flow_collections(
    text: &str,
    each: impl FnMut(usize, Mark) -> ControlFlow<()>,
) -> ControlFlow<()> {
    Scanner::new(text.as_bytes()).run(each)
}

struct Scanner<'a> {
    text: &'a [u8],
    mark: Mark,
    /// Open flow collections.
    flow_level: usize,
    /// The column of the innermost block collection; -1 outside any.
    indent: isize,
    /// The enclosing blocks' indentations.
    indents: Vec<isize>,
    /// Whether a simple key (`key: value` without `?`) may start here.
    simple_key_allowed: bool,
    /// Where the simple key of the block context starts, while a `:` may
    /// still make it one. Keys inside flow collections change neither the
    /// indentation nor what may follow them, so they are not kept.
    block_key: Option<Mark>,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a [u8]) -> Self {
        // libyaml's reader drops a byte order mark at the start.
        let index = if text.starts_with(BOM) { BOM.len() } else { 0 };
        Scanner {
            text,
            mark: Mark {
                index,
                line: 0,
                column: 0,
            },
            flow_level: 0,
            indent: -1,
            indents: Vec::new(),
            simple_key_allowed: true,
            block_key: None,
        }
    }

    /// `yaml_parser_fetch_next_token`, until the end of the text.
    fn run(&mut self, mut each: impl FnMut(usize, Mark) -> ControlFlow<()>) -> ControlFlow<()> {
        loop {
            self.scan_to_next_token();
            self.stale_simple_key();
            self.unroll_indent(self.mark.column as isize);
            let Some(byte) = self.at(0) else {
                return ControlFlow::Continue(());
            };
            let blankz_next = self.is_blankz(1);
            match byte {
                b'%' if self.mark.column == 0 => {
                    // A directive: one line.
                    self.unroll_indent(-1);
                    self.remove_simple_key();
                    self.simple_key_allowed = false;
                    self.skip_to_break();
                }
                b'-' | b'.' if self.mark.column == 0 && self.document_indicator() => {
                    self.unroll_indent(-1);
                    self.remove_simple_key();
                    self.simple_key_allowed = false;
                    for _ in 0..3 {
                        self.skip();
                    }
                }
                b'[' | b'{' => {
                    self.save_simple_key();
                    self.flow_level += 1;
                    self.simple_key_allowed = true;
                    each(self.flow_level, self.mark)?;
                    self.skip();
                }
                b']' | b'}' => {
                    self.remove_simple_key();
                    self.flow_level = self.flow_level.saturating_sub(1);
                    self.simple_key_allowed = false;
                    each(self.flow_level, self.mark)?;
                    self.skip();
                }
                b',' => {
                    self.remove_simple_key();
                    self.simple_key_allowed = true;
                    self.skip();
                }
                b'-' if blankz_next => {
                    // A block sequence entry.
                    self.roll_indent(self.mark.column);
                    self.remove_simple_key();
                    self.simple_key_allowed = true;
                    self.skip();
                }
                b'?' if self.flow_level > 0 || blankz_next => {
                    // A complex key.
                    self.roll_indent(self.mark.column);
                    self.remove_simple_key();
                    self.simple_key_allowed = self.flow_level == 0;
                    self.skip();
                }
                b':' if self.flow_level > 0 || blankz_next => {
                    // A value: the simple key before it, if any, starts a
                    // block mapping at its column.
                    if self.flow_level > 0 {
                        self.simple_key_allowed = false;
                    } else if let Some(key) = self.block_key.take() {
                        self.roll_indent(key.column);
                        self.simple_key_allowed = false;
                    } else {
                        self.roll_indent(self.mark.column);
                        self.simple_key_allowed = true;
                    }
                    self.skip();
                }
                b'*' | b'&' => {
                    // An alias or an anchor.
                    self.save_simple_key();
                    self.simple_key_allowed = false;
                    self.skip();
                    while self.at(0).is_some_and(is_alpha) {
                        self.skip();
                    }
                }
                b'!' => {
                    self.save_simple_key();
                    self.simple_key_allowed = false;
                    self.scan_tag();
                }
                b'|' | b'>' if self.flow_level == 0 => {
                    self.remove_simple_key();
                    self.simple_key_allowed = true;
                    self.scan_block_scalar();
                }
                b'\'' | b'"' => {
                    self.save_simple_key();
                    self.simple_key_allowed = false;
                    self.scan_flow_scalar(byte == b'\'');
                }
                _ if self.plain_scalar_starts(byte) => {
                    self.save_simple_key();
                    self.simple_key_allowed = false;
                    self.scan_plain_scalar();
                }
                // No token starts here: libyaml stops.
                _ => self.skip(),
            }
        }
    }

    /// `yaml_parser_scan_to_next_token`: blanks, comments and line breaks.
    fn scan_to_next_token(&mut self) {
        loop {
            if self.mark.column == 0 && self.text[self.mark.index..].starts_with(BOM) {
                self.skip();
            }
            while self.is(0, b' ')
                || ((self.flow_level > 0 || !self.simple_key_allowed) && self.is(0, b'\t'))
            {
                self.skip();
            }
            if self.is(0, b'#') {
                self.skip_to_break();
            }
            if !self.is_break(0) {
                return;
            }
            self.skip_line();
            if self.flow_level == 0 {
                self.simple_key_allowed = true;
            }
        }
    }

    /// `yaml_parser_stale_simple_keys`, for the block context's key: a
    /// simple key is on one line and at most 1024 bytes long.
    fn stale_simple_key(&mut self) {
        if let Some(key) = self.block_key {
            if key.line < self.mark.line || key.index + 1024 < self.mark.index {
                self.block_key = None;
            }
        }
    }

    fn save_simple_key(&mut self) {
        if self.simple_key_allowed && self.flow_level == 0 {
            self.block_key = Some(self.mark);
        }
    }

    fn remove_simple_key(&mut self) {
        if self.flow_level == 0 {
            self.block_key = None;
        }
    }

    fn roll_indent(&mut self, column: usize) {
        let column = column as isize;
        if self.flow_level == 0 && self.indent < column {
            self.indents.push(self.indent);
            self.indent = column;
        }
    }

    fn unroll_indent(&mut self, column: isize) {
        if self.flow_level > 0 {
            return;
        }
        while self.indent > column {
            self.indent = self.indents.pop().unwrap_or(-1);
        }
    }

    /// The condition under which `yaml_parser_fetch_next_token` scans a
    /// plain scalar.
    fn plain_scalar_starts(&self, byte: u8) -> bool {
        !(self.is_blankz(0)
            || matches!(
                byte,
                b'-' | b'?'
                    | b':'
                    | b','
                    | b'['
                    | b']'
                    | b'{'
                    | b'}'
                    | b'#'
                    | b'&'
                    | b'*'
                    | b'!'
                    | b'|'
                    | b'>'
                    | b'\''
                    | b'"'
                    | b'%'
                    | b'@'
                    | b'`'
            ))
            || (byte == b'-' && !self.is_blank(1))
            || (self.flow_level == 0 && matches!(byte, b'?' | b':') && !self.is_blankz(1))
    }

    /// `yaml_parser_scan_tag`: `!<uri>`, or a handle and a suffix.
    fn scan_tag(&mut self) {
        let verbatim = self.is(1, b'<');
        self.skip();
        if verbatim {
            self.skip();
        }
        while self.at(0).is_some_and(|b| is_uri(b, verbatim)) {
            self.skip();
        }
        if verbatim && self.is(0, b'>') {
            self.skip();
        }
    }

    /// `yaml_parser_scan_flow_scalar`: a single- or double-quoted scalar.
    fn scan_flow_scalar(&mut self, single: bool) {
        let quote = if single { b'\'' } else { b'"' };
        self.skip();
        loop {
            if (self.mark.column == 0 && self.document_indicator()) || self.is_z(0) {
                return;
            }
            while !self.is_blankz(0) {
                if single && self.is(0, b'\'') && self.is(1, b'\'') {
                    self.skip();
                    self.skip();
                } else if self.is(0, quote) {
                    self.skip();
                    return;
                } else if !single && self.is(0, b'\\') && self.is_break(1) {
                    self.skip();
                    self.skip_line();
                    break;
                } else if !single && self.is(0, b'\\') {
                    // An escape: the character after the backslash is text
                    // (`\"` included); the digits of `\x`, `\u`, `\U` are
                    // read as text next.
                    self.skip();
                    self.skip();
                } else {
                    self.skip();
                }
            }
            while self.is_blank(0) || self.is_break(0) {
                if self.is_blank(0) {
                    self.skip();
                } else {
                    self.skip_line();
                }
            }
        }
    }

    /// `yaml_parser_scan_plain_scalar`. Inside it, quotes and (in block
    /// context) brackets are text.
    fn scan_plain_scalar(&mut self) {
        let indent = self.indent + 1;
        let mut leading_blanks = false;
        loop {
            if (self.mark.column == 0 && self.document_indicator()) || self.is(0, b'#') {
                break;
            }
            while !self.is_blankz(0) {
                let byte = self.at(0);
                if self.flow_level > 0
                    && byte == Some(b':')
                    && matches!(self.at(1), Some(b',' | b'?' | b'[' | b']' | b'{' | b'}'))
                {
                    // libyaml: "found unexpected ':'".
                    return;
                }
                if (byte == Some(b':') && self.is_blankz(1))
                    || (self.flow_level > 0
                        && matches!(byte, Some(b',' | b'[' | b']' | b'{' | b'}')))
                {
                    break;
                }
                leading_blanks = false;
                self.skip();
            }
            if !(self.is_blank(0) || self.is_break(0)) {
                break;
            }
            while self.is_blank(0) || self.is_break(0) {
                if self.is_blank(0) {
                    self.skip();
                } else {
                    self.skip_line();
                    leading_blanks = true;
                }
            }
            if self.flow_level == 0 && (self.mark.column as isize) < indent {
                break;
            }
        }
        if leading_blanks {
            self.simple_key_allowed = true;
        }
    }

    /// `yaml_parser_scan_block_scalar`: its header line, then every line
    /// indented at least as much as its first one (or as its indentation
    /// indicator says).
    fn scan_block_scalar(&mut self) {
        self.skip();
        let mut increment = 0;
        if self.is(0, b'+') || self.is(0, b'-') {
            self.skip();
            if let Some(digit @ b'0'..=b'9') = self.at(0) {
                if digit == b'0' {
                    return;
                }
                increment = isize::from(digit - b'0');
                self.skip();
            }
        } else if let Some(digit @ b'0'..=b'9') = self.at(0) {
            if digit == b'0' {
                return;
            }
            increment = isize::from(digit - b'0');
            self.skip();
            if self.is(0, b'+') || self.is(0, b'-') {
                self.skip();
            }
        }
        while self.is_blank(0) {
            self.skip();
        }
        if self.is(0, b'#') {
            self.skip_to_break();
        }
        if !self.is_break(0) {
            // Text after the header: an error, unless the text ends.
            return;
        }
        self.skip_line();
        let mut indent = match increment {
            0 => 0,
            _ if self.indent >= 0 => self.indent + increment,
            _ => increment,
        };
        if !self.scan_block_scalar_breaks(&mut indent) {
            return;
        }
        while self.mark.column as isize == indent && !self.is_z(0) {
            self.skip_to_break();
            if self.is_break(0) {
                self.skip_line();
            }
            if !self.scan_block_scalar_breaks(&mut indent) {
                return;
            }
        }
    }

    /// `yaml_parser_scan_block_scalar_breaks`: empty lines and the
    /// indentation of the next one, which sets the scalar's indentation
    /// when no indicator did. `false` where libyaml fails (a tab in the
    /// indentation).
    fn scan_block_scalar_breaks(&mut self, indent: &mut isize) -> bool {
        let mut max_indent = 0;
        loop {
            while (*indent == 0 || (self.mark.column as isize) < *indent) && self.is(0, b' ') {
                self.skip();
            }
            max_indent = max_indent.max(self.mark.column as isize);
            if (*indent == 0 || (self.mark.column as isize) < *indent) && self.is(0, b'\t') {
                return false;
            }
            if !self.is_break(0) {
                break;
            }
            self.skip_line();
        }
        if *indent == 0 {
            *indent = max_indent.max(self.indent + 1).max(1);
        }
        true
    }

    /// `---` or `...` followed by a blank, a line break or the end (at
    /// column 0, checked by the caller).
    fn document_indicator(&self) -> bool {
        let rest = &self.text[self.mark.index..];
        (rest.starts_with(b"---") || rest.starts_with(b"...")) && self.is_blankz(3)
    }

    fn at(&self, offset: usize) -> Option<u8> {
        self.text.get(self.mark.index + offset).copied()
    }

    fn is(&self, offset: usize, byte: u8) -> bool {
        self.at(offset) == Some(byte)
    }

    fn is_z(&self, offset: usize) -> bool {
        self.mark.index + offset >= self.text.len()
    }

    fn is_blank(&self, offset: usize) -> bool {
        matches!(self.at(offset), Some(b' ' | b'\t'))
    }

    /// The length of the line break at `offset` (`\r\n` counts 2), or 0.
    fn break_len(&self, offset: usize) -> usize {
        let rest = &self.text[(self.mark.index + offset).min(self.text.len())..];
        match rest {
            [b'\r', b'\n', ..] => 2,
            [b'\r' | b'\n', ..] => 1,
            [0xC2, 0x85, ..] => 2,
            [0xE2, 0x80, 0xA8 | 0xA9, ..] => 3,
            _ => 0,
        }
    }

    fn is_break(&self, offset: usize) -> bool {
        self.break_len(offset) > 0
    }

    fn is_breakz(&self, offset: usize) -> bool {
        self.is_break(offset) || self.is_z(offset)
    }

    fn is_blankz(&self, offset: usize) -> bool {
        self.is_blank(offset) || self.is_breakz(offset)
    }

    /// Past one character (nothing at the end).
    fn skip(&mut self) {
        if let Some(byte) = self.at(0) {
            self.mark.index += utf8_len(byte);
            self.mark.column += 1;
        }
    }

    /// Past one line break.
    fn skip_line(&mut self) {
        let len = self.break_len(0);
        if len > 0 {
            self.mark.index += len;
            self.mark.line += 1;
            self.mark.column = 0;
        }
    }

    /// To the next line break or the end.
    fn skip_to_break(&mut self) {
        while !self.is_breakz(0) {
            self.skip();
        }
    }
}

const BOM: &[u8] = "\u{FEFF}".as_bytes();

/// The bytes of the UTF-8 character that starts with `byte`.
fn utf8_len(byte: u8) -> usize {
    match byte {
        0xF0.. => 4,
        0xE0.. => 3,
        0xC0.. => 2,
        _ => 1,
    }
}

/// libyaml's `IS_ALPHA`: the characters of anchors and tag handles.
fn is_alpha(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-')
}

/// The characters of a tag's URI (`yaml_parser_scan_tag_uri`); `,`, `[`
/// and `]` only in a verbatim tag (`!<...>`).
fn is_uri(byte: u8, verbatim: bool) -> bool {
    is_alpha(byte)
        || matches!(
            byte,
            b';' | b'/'
                | b'?'
                | b':'
                | b'@'
                | b'&'
                | b'='
                | b'+'
                | b'$'
                | b'.'
                | b'%'
                | b'!'
                | b'~'
                | b'*'
                | b'\''
                | b'('
                | b')'
        )
        || (verbatim && matches!(byte, b',' | b'[' | b']'))
}
