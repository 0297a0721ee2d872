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
//! cost time but never change the result or an error's wording.

/// A file's text cut in pieces.
#[derive(Debug, PartialEq, Eq)]
pub struct Cut<'t> {
    /// Every piece that is not a `[[plugin]]` table, in order.
    pub rest: Vec<&'t str>,
    /// Each `[[plugin]]` table with its sub-tables (`[plugin.config]`,
    /// `[plugin.http]`, ...), in order.
    pub plugins: Vec<&'t str>,
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

/// Cuts `text`; `None` when its plugin tables are not contiguous blocks
/// (a sub-table of a plugin after another table, or a quoted `"plugin"`
/// header), which only the whole parse reads right.
pub fn cut(text: &str) -> Option<Cut<'_>> {
    let mut cut = Cut {
        rest: Vec::new(),
        plugins: Vec::new(),
    };
    // The piece being read: where it starts and whether it is a plugin.
    let (mut start, mut in_plugin) = (0, false);
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
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
        let piece = &text[start..at];
        if in_plugin {
            cut.plugins.push(piece);
        } else if !piece.is_empty() {
            cut.rest.push(piece);
        }
        start = at;
        in_plugin = kind == Header::Plugin;
    }
    let piece = &text[start..];
    if in_plugin {
        cut.plugins.push(piece);
    } else if !piece.is_empty() {
        cut.rest.push(piece);
    }
    Some(cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_tables_and_their_parts_are_cut_from_the_rest() {
        let text = "a = 1\n[node]\nx = 2\n[[plugin]]\nid = \"p\"\n[plugin.config]\nk = \"v\"\n\n[ [plugin] ] # two\nid = \"q\"\n[admin]\ny = 3\n";
        let cut = cut(text).unwrap();
        assert_eq!(
            cut.plugins,
            [
                "[[plugin]]\nid = \"p\"\n[plugin.config]\nk = \"v\"\n\n",
                "[ [plugin] ] # two\nid = \"q\"\n"
            ]
        );
        assert_eq!(cut.rest, ["a = 1\n", "[node]\nx = 2\n", "[admin]\ny = 3\n"]);
        assert_eq!(
            cut.rest.concat().len() + cut.plugins.concat().len(),
            text.len()
        );
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
        let cut = cut(text).unwrap();
        assert_eq!(cut.plugins.len(), 2);
        assert!(toml::from_str::<toml::Table>(cut.plugins[0]).is_err());
    }
}
