//! Cuts a configuration file's text into its `[[plugin]]` tables and the
//! rest, so that a hot reload of a file with thousands of tables parses
//! only the tables whose text changed (`file::PluginFileCache`).
//!
//! A cut is made at every line that starts with `[` (after blanks). Such a
//! line inside a multi-line string or array is no header, and cutting there
//! leaves the piece before it with an unclosed string or bracket, which
//! does not parse: the caller parses every piece (each `[[plugin]]` table
//! alone, each other piece alone and then all of them together) and falls
//! back to parsing the whole text when any piece fails, so a wrong cut can
//! cost time but never change the result or an error's wording. A reload
//! cuts again only the text around what changed since the last read
//! ([`recut`]), with the same result as a whole cut.

/// One piece of a cut: where it lies in the text, and whether it is a
/// `[[plugin]]` table (with its sub-tables) or any other text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Its first byte.
    pub start: usize,
    /// One past its last byte.
    pub end: usize,
    /// A `[[plugin]]` table, else other text.
    pub plugin: bool,
}

impl Piece {
    /// Its text in `text`, the text it was cut from.
    pub fn of<'t>(&self, text: &'t str) -> &'t str {
        &text[self.start..self.end]
    }
}

/// What a header line opens.
#[derive(PartialEq)]
enum Header {
    /// `[[plugin]]`: a new plugin table.
    Plugin,
    /// `[plugin.x]` or `[[plugin.x]]`: a sub-table of the last plugin.
    PluginPart,
    /// Any other table.
    Other,
}

fn header(line: &str) -> Header {
    // The headers told apart are at most 10 characters without blanks: the
    // first 16 decide (on the stack: a file of thousands of tables has
    // thousands of header lines).
    let mut buffer = [0u8; 16];
    let (mut len, mut whole) = (0, true);
    let compact_chars = line
        .split('#')
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_whitespace());
    for c in compact_chars {
        if len == buffer.len() || !c.is_ascii() {
            // Longer, or not ASCII: no header named here equals it, and
            // its first characters are as read.
            whole = false;
            break;
        }
        buffer[len] = c as u8;
        len += 1;
    }
    let compact = std::str::from_utf8(&buffer[..len]).unwrap_or_default();
    if whole && compact == "[[plugin]]" {
        Header::Plugin
    } else if compact.starts_with("[plugin.")
        || compact.starts_with("[[plugin.")
        || compact.starts_with("[\"plugin\"")
        || compact.starts_with("[[\"plugin\"")
        || compact.starts_with("['plugin'")
        || compact.starts_with("[['plugin'")
        || (whole && compact == "[plugin]")
    {
        Header::PluginPart
    } else {
        Header::Other
    }
}

/// Cuts `text` into its pieces, in order (every byte in one piece);
/// `None` when its plugin tables are not contiguous blocks (a sub-table of
/// a plugin after another table, or a quoted `"plugin"` header), which
/// only the whole parse reads right.
pub fn cut(text: &str) -> Option<Vec<Piece>> {
    let mut pieces = Vec::new();
    scan(text, 0, &mut pieces, |_| false)?;
    Some(pieces)
}

/// Cuts `text` from `from`, a line that opens a piece (or 0), into
/// `pieces`; stops before a header line at which `stop` says the rest is
/// known, and returns where it stopped (the text's end when it did not).
fn scan(
    text: &str,
    from: usize,
    pieces: &mut Vec<Piece>,
    mut stop: impl FnMut(usize) -> bool,
) -> Option<usize> {
    // The piece being read: where it starts and whether it is a plugin.
    let (mut start, mut in_plugin) = (from, false);
    let push = |pieces: &mut Vec<Piece>, start: usize, end: usize, plugin: bool| {
        // Only text before the first header can be empty.
        if plugin || end > start {
            pieces.push(Piece { start, end, plugin });
        }
    };
    let mut offset = from;
    for line in text[from..].split_inclusive('\n') {
        let at = offset;
        offset += line.len();
        if !line.trim_start().starts_with('[') {
            continue;
        }
        let kind = header(line);
        if kind == Header::PluginPart {
            // `[plugin]`, quoted names and parts after other tables: only
            // the whole parse knows what they mean.
            let compact = line.trim_start();
            if !in_plugin || !(compact.starts_with("[plugin.") || compact.starts_with("[[plugin."))
            {
                return None;
            }
            continue;
        }
        if at > from && stop(at) {
            push(pieces, start, at, in_plugin);
            return Some(at);
        }
        push(pieces, start, at, in_plugin);
        start = at;
        in_plugin = kind == Header::Plugin;
    }
    push(pieces, start, text.len(), in_plugin);
    Some(text.len())
}

/// The cut of a new text told as a change to the cut of the last one: the
/// last cut's first `front` pieces and last `back` pieces (shifted by the
/// change in length) with `middle` between them.
#[derive(Debug, PartialEq, Eq)]
pub struct Recut {
    /// Pieces kept from the start of the last cut, as they were.
    pub front: usize,
    /// The pieces cut anew, placed in the new text.
    pub middle: Vec<Piece>,
    /// Pieces kept from the end of the last cut; in the new text each
    /// starts `new.len() - old.len()` bytes further.
    pub back: usize,
}

/// Cuts `new` knowing `old` and its cut `pieces`: only the text from the
/// line of the first difference to the first header after the last is cut
/// again, so an edit of one table among thousands cuts one table. The
/// result is [`cut`]`(new)`'s, told as a [`Recut`]: a cut reads one line at
/// a time and a piece ends where a header line starts, so a piece that
/// ends before the first changed line is the same piece, and from a header
/// line inside the unchanged end on, the pieces are the old ones.
pub fn recut(old: &str, pieces: &[Piece], new: &str) -> Option<Recut> {
    let (old_bytes, new_bytes) = (old.as_bytes(), new.as_bytes());
    let same_start = common_prefix(old_bytes, new_bytes);
    if same_start == old.len() && same_start == new.len() {
        return Some(Recut {
            front: pieces.len(),
            middle: Vec::new(),
            back: 0,
        });
    }
    let most_end = old.len().min(new.len()) - same_start;
    let same_end = common_suffix(old_bytes, new_bytes).min(most_end);
    // The first line that differs; the pieces ending before it are kept.
    let changed_line = new_bytes[..same_start]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |at| at + 1);
    let front = pieces.partition_point(|piece| piece.end < changed_line);
    let from = front.checked_sub(1).map_or(0, |last| pieces[last].end);
    // A header line whose line break before it is in the unchanged end
    // starts an old piece: from there on the cut is the old one.
    let unchanged_from = new.len() - same_end;
    let mut back = 0;
    let mut middle = Vec::new();
    scan(new, from, &mut middle, |at| {
        if at <= unchanged_from {
            return false;
        }
        let old_at = at + old.len() - new.len();
        match pieces[front..].binary_search_by_key(&old_at, |piece| piece.start) {
            Ok(index) => {
                back = pieces.len() - front - index;
                true
            }
            Err(_) => false,
        }
    })?;
    Some(Recut {
        front,
        middle,
        back,
    })
}

/// Bytes compared at once: slices compare with `memcmp`, a 200 KB file in
/// microseconds; only the last block is looked into byte by byte.
const BLOCK: usize = 128;

/// How many bytes `a` and `b` start with in common.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let most = a.len().min(b.len());
    let mut at = 0;
    while at + BLOCK <= most && a[at..at + BLOCK] == b[at..at + BLOCK] {
        at += BLOCK;
    }
    at + a[at..most]
        .iter()
        .zip(&b[at..most])
        .take_while(|(x, y)| x == y)
        .count()
}

/// How many bytes `a` and `b` end with in common.
fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    let most = a.len().min(b.len());
    let (a_end, b_end) = (a.len(), b.len());
    let mut len = 0;
    while len + BLOCK <= most
        && a[a_end - len - BLOCK..a_end - len] == b[b_end - len - BLOCK..b_end - len]
    {
        len += BLOCK;
    }
    len + a[..a_end - len]
        .iter()
        .rev()
        .zip(b[..b_end - len].iter().rev())
        .take(most - len)
        .take_while(|(x, y)| x == y)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts of `text`'s pieces of one kind.
    fn texts(text: &str, pieces: &[Piece], plugin: bool) -> Vec<String> {
        pieces
            .iter()
            .filter(|p| p.plugin == plugin)
            .map(|p| p.of(text).to_string())
            .collect()
    }

    #[test]
    fn plugin_tables_and_their_parts_are_cut_from_the_rest() {
        let text = "a = 1\n[node]\nx = 2\n[[plugin]]\nid = \"p\"\n[plugin.config]\nk = \"v\"\n\n[ [plugin] ] # two\nid = \"q\"\n[admin]\ny = 3\n";
        let pieces = cut(text).unwrap();
        assert_eq!(
            texts(text, &pieces, true),
            [
                "[[plugin]]\nid = \"p\"\n[plugin.config]\nk = \"v\"\n\n",
                "[ [plugin] ] # two\nid = \"q\"\n"
            ]
        );
        assert_eq!(
            texts(text, &pieces, false),
            ["a = 1\n", "[node]\nx = 2\n", "[admin]\ny = 3\n"]
        );
        let joined: String = pieces.iter().map(|p| p.of(text)).collect();
        assert_eq!(joined, text, "every byte in one piece, in order");
    }

    #[test]
    fn parts_of_a_plugin_elsewhere_are_left_to_the_whole_parse() {
        assert_eq!(
            cut("[[plugin]]\nid = \"p\"\n[node]\n[plugin.config]\n"),
            None
        );
        assert_eq!(cut("[\"plugin\".config]\n"), None);
        assert_eq!(cut("[plugin]\nid = \"p\"\n"), None);
    }

    #[test]
    fn a_header_inside_a_string_makes_a_piece_that_does_not_parse() {
        let text = "[[plugin]]\nid = \"\"\"\n[[plugin]]\n\"\"\"\n";
        let pieces = cut(text).unwrap();
        assert_eq!(pieces.len(), 2);
        assert!(toml::from_str::<toml::Table>(pieces[0].of(text)).is_err());
    }

    /// `recut`'s answer spliced into the old cut.
    fn spliced(old: &str, new: &str) -> Option<(Vec<Piece>, usize)> {
        let pieces = cut(old).unwrap();
        let recut = recut(old, &pieces, new)?;
        let shift = |piece: &Piece| Piece {
            start: piece.start + new.len() - old.len(),
            end: piece.end + new.len() - old.len(),
            plugin: piece.plugin,
        };
        let mut joined = pieces[..recut.front].to_vec();
        joined.extend(&recut.middle);
        joined.extend(pieces[pieces.len() - recut.back..].iter().map(shift));
        Some((joined, recut.middle.len()))
    }

    fn table(id: usize, extra: &str) -> String {
        format!(
            "\n[[plugin]]\nid = \"p{id}\"\npath = \"e.wasm\"\n{extra}[plugin.config]\nk = \"{id}\"\n"
        )
    }

    #[test]
    fn an_edit_of_one_table_among_many_cuts_only_that_table_again() {
        let tables = |edited: &str| -> String {
            let mut text = "[node]\nmax_concurrent = 8\n".to_string();
            for id in 0..200 {
                text += &table(id, if id == 120 { edited } else { "" });
            }
            text + "[admin]\ntoken_env = \"T\"\n"
        };
        let old = tables("");
        for edit in [
            "timeout_ms = 500\n",
            "# a comment only\n",
            "   \n",
            "intents = [\"urn:x\"]\n",
        ] {
            let new = tables(edit);
            let (joined, cut_again) = spliced(&old, &new).unwrap();
            assert_eq!(Some(joined), cut(&new), "{edit:?}");
            assert_eq!(cut_again, 1, "only the edited table: {edit:?}");
        }
    }

    #[test]
    fn a_recut_is_the_cut_of_the_new_text_whatever_the_edit() {
        let mut old = "x = 1\n[node]\n".to_string();
        for id in 0..12 {
            old += &table(id, "");
            if id == 6 {
                old += "[admin]\ntoken_env = \"T\"\n";
            }
        }
        let mut edits: Vec<String> = Vec::new();
        // Every kind of line typed or removed at every line start, and a
        // table moved: the splice must agree with a whole cut each time
        // (None, too: a part of a plugin out of place).
        let inserts = [
            "[[plugin]]\n",
            "[plugin.http]\n",
            "[other]\n",
            "y = \"\"\"\n",
            "\"\"\"\n",
            "# [[plugin]]\n",
            "ü = 1\n",
            "",
        ];
        let starts: Vec<usize> = std::iter::once(0)
            .chain(old.match_indices('\n').map(|(at, _)| at + 1))
            .collect();
        for &at in &starts {
            for insert in inserts {
                edits.push(format!("{}{insert}{}", &old[..at], &old[at..]));
            }
            if let Some(&next) = starts.iter().find(|&&s| s > at) {
                edits.push(format!("{}{}", &old[..at], &old[next..]));
            }
        }
        let moved = old.replacen(&table(2, ""), "", 1) + &table(2, "");
        edits.push(moved);
        edits.push(String::new());
        for new in &edits {
            let spliced = spliced(&old, new).map(|(joined, _)| joined);
            assert_eq!(spliced, cut(new), "{new:?}");
        }
        let same = spliced(&old, &old).unwrap();
        assert_eq!((Some(same.0), same.1), (cut(&old), 0));
    }
}
