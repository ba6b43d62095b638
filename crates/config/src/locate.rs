//! Maps between positions in the TOML text and field paths, both ways.
//!
//! Deserialization errors know a byte offset but not which key it belongs to; validation errors
//! know the key but not where it is. Both are answered from a `toml_edit::ImDocument`, which
//! keeps the span of every key, value and table header.

use std::ops::Range;

use toml_edit::{ImDocument, Item, Key, Table, TableLike, Value};

use crate::path::{FieldPath, Segment};

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The innermost key, value or table whose span contains `offset`.
pub(crate) fn path_at(doc: &ImDocument<&str>, offset: usize) -> FieldPath {
    let mut finder = Finder { offset, best: None };
    finder.table(doc.as_table(), &FieldPath::root());
    finder.best.map(|(_, path)| path).unwrap_or_default()
}

struct Finder {
    offset: usize,
    best: Option<(usize, FieldPath)>,
}

impl Finder {
    fn consider(&mut self, path: &FieldPath, span: Option<Range<usize>>) {
        let Some(span) = span else { return };
        let inside = span.contains(&self.offset) || (span.is_empty() && span.start == self.offset);
        if !inside {
            return;
        }
        let len = span.len();
        let better = match &self.best {
            None => true,
            Some((best_len, best_path)) => {
                len < *best_len || (len == *best_len && path.segments().len() > best_path.segments().len())
            }
        };
        if better {
            self.best = Some((len, path.clone()));
        }
    }

    fn table(&mut self, table: &Table, path: &FieldPath) {
        // The root's span only covers its leading keys and is empty without them; an error
        // nowhere else is better left without a field than blamed on the empty root.
        if !path.segments().is_empty() {
            self.consider(path, table.span());
        }
        for (name, item) in table.iter() {
            let child = path.key(name);
            self.consider(&child, table.key(name).and_then(Key::span));
            self.item(item, &child);
        }
    }

    fn item(&mut self, item: &Item, path: &FieldPath) {
        match item {
            Item::None => {}
            Item::Value(value) => self.value(value, path),
            Item::Table(table) => self.table(table, path),
            Item::ArrayOfTables(tables) => {
                for (index, table) in tables.iter().enumerate() {
                    self.table(table, &path.index(index));
                }
            }
        }
    }

    fn value(&mut self, value: &Value, path: &FieldPath) {
        self.consider(path, value.span());
        match value {
            Value::Array(array) => {
                for (index, element) in array.iter().enumerate() {
                    self.value(element, &path.index(index));
                }
            }
            Value::InlineTable(table) => {
                for (name, element) in table.iter() {
                    let child = path.key(name);
                    self.consider(&child, table.key(name).and_then(Key::span));
                    self.value(element, &child);
                }
            }
            _ => {}
        }
    }
}

enum Node<'a> {
    Table(&'a Table),
    Item(&'a Item),
    Value(&'a Value),
}

impl<'a> Node<'a> {
    fn table_like(&self) -> Option<&'a dyn TableLike> {
        match *self {
            Node::Table(table) => Some(table),
            Node::Item(item) => item.as_table_like(),
            Node::Value(value) => value.as_inline_table().map(|table| table as &dyn TableLike),
        }
    }

    fn index(&self, index: usize) -> Option<Node<'a>> {
        match *self {
            Node::Item(Item::ArrayOfTables(tables)) => tables.get(index).map(Node::Table),
            Node::Item(Item::Value(Value::Array(array))) | Node::Value(Value::Array(array)) => {
                array.get(index).map(Node::Value)
            }
            _ => None,
        }
    }

    fn span(&self) -> Option<Range<usize>> {
        match self {
            Node::Table(table) => table.span(),
            Node::Item(item) => item.span(),
            Node::Value(value) => value.span(),
        }
    }
}

/// Span of the value at `path` (a table's header for tables). When the path does not exist in
/// the text, because the value is a default or is missing, the nearest ancestor that has a span.
pub(crate) fn span_of(doc: &ImDocument<&str>, path: &FieldPath) -> Option<Range<usize>> {
    let mut node = Node::Table(doc.as_table());
    let mut best = None;
    for segment in path.segments() {
        let (next, key_span) = match segment {
            Segment::Key(name) => {
                let Some((key, item)) = node.table_like().and_then(|table| table.get_key_value(name)) else {
                    break;
                };
                (Node::Item(item), key.span())
            }
            Segment::Index(index) => {
                let Some(next) = node.index(*index) else {
                    break;
                };
                (next, None)
            }
        };
        // Dotted keys create tables with no span of their own; their key still has one.
        if let Some(span) = next.span().or(key_span) {
            best = Some(span);
        }
        node = next;
    }
    best
}

/// Best guess at the key a syntax error is in, from the part of the text before it.
///
/// The document did not parse, so there is no tree to walk. Instead, parse the text up to the
/// start of the offending line (or an earlier line, when the error is inside a value spanning
/// lines) and combine the last table header seen with the key written on that line.
pub(crate) fn path_for_syntax_error(text: &str, offset: usize) -> FieldPath {
    const MAX_LINES_BACK: usize = 64;
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let mut line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    for _ in 0..MAX_LINES_BACK {
        if let Ok(doc) = ImDocument::parse(&text[..line_start]) {
            let line_end = text[line_start..]
                .find('\n')
                .map_or(text.len(), |i| line_start + i);
            return path_of_line(&doc, &text[line_start..line_end]);
        }
        if line_start == 0 {
            break;
        }
        line_start = text[..line_start - 1].rfind('\n').map_or(0, |i| i + 1);
    }
    FieldPath::root()
}

fn path_of_line(doc: &ImDocument<&str>, line: &str) -> FieldPath {
    let line = line.trim();
    if let Some(header) = line.strip_prefix('[') {
        let header = header.trim_start_matches('[');
        let inner = header.split(']').next().unwrap_or_default();
        return append_keys(FieldPath::root(), inner);
    }
    let context = last_header(doc);
    match line.split_once('=') {
        Some((keys, _)) => append_keys(context, keys),
        None => context,
    }
}

fn append_keys(base: FieldPath, keys: &str) -> FieldPath {
    match Key::parse(keys.trim()) {
        Ok(keys) => keys.iter().fold(base, |path, key| path.key(key.get())),
        Err(_) => base,
    }
}

/// Path of the table whose header comes last in the document: where a following key lands.
fn last_header(doc: &ImDocument<&str>) -> FieldPath {
    fn walk(table: &Table, path: &FieldPath, best: &mut (usize, FieldPath)) {
        if let Some(span) = table.span() {
            if !table.is_dotted() && span.start >= best.0 {
                *best = (span.start, path.clone());
            }
        }
        for (name, item) in table.iter() {
            match item {
                Item::Table(child) => walk(child, &path.key(name), best),
                Item::ArrayOfTables(tables) => {
                    for (index, child) in tables.iter().enumerate() {
                        walk(child, &path.key(name).index(index), best);
                    }
                }
                _ => {}
            }
        }
    }
    let mut best = (0, FieldPath::root());
    walk(doc.as_table(), &FieldPath::root(), &mut best);
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
version = \"1\"

[[pool]]
name = \"web\"
origin = [{ url = \"http://a\" }, { url = \"http://b\", weight = 2 }]

[[pool]]
name = \"api\"
[pool.health_check]
path = \"/\"
[[pool.origin]]
url = \"http://c\"
";

    fn doc() -> ImDocument<&'static str> {
        ImDocument::parse(TEXT).unwrap()
    }

    fn offset_of(needle: &str) -> usize {
        TEXT.find(needle).unwrap()
    }

    #[test]
    fn line_column_is_one_based_and_counts_characters() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("é = 1\nx", 4), (1, 4));
        assert_eq!(line_column("ab", 99), (1, 3));
    }

    #[test]
    fn finds_innermost_path_at_offset() {
        let doc = doc();
        assert_eq!(
            path_at(&doc, offset_of("weight")).to_string(),
            "pool[0].origin[1].weight"
        );
        assert_eq!(
            path_at(&doc, offset_of("\"http://a\"")).to_string(),
            "pool[0].origin[0].url"
        );
        assert_eq!(
            path_at(&doc, offset_of("\"http://c\"")).to_string(),
            "pool[1].origin[0].url"
        );
        assert_eq!(
            path_at(&doc, offset_of("path")).to_string(),
            "pool[1].health_check.path"
        );
        assert_eq!(path_at(&doc, offset_of("version")).to_string(), "version");
    }

    #[test]
    fn resolves_paths_to_spans() {
        let doc = doc();
        let at = |path: FieldPath| span_of(&doc, &path).map(|span| line_column(TEXT, span.start));
        let pool1 = FieldPath::root().key("pool").index(1);
        assert_eq!(at(pool1.key("origin").index(0).key("url")), Some((12, 7)));
        assert_eq!(at(pool1.key("health_check").key("rise")), Some((9, 1)));
        assert_eq!(at(pool1.key("tls")), Some((7, 1)));
        assert_eq!(
            at(FieldPath::root()
                .key("pool")
                .index(0)
                .key("origin")
                .index(1)
                .key("weight")),
            Some((5, 62))
        );
        assert_eq!(at(FieldPath::root().key("admin")), None);
    }

    #[test]
    fn guesses_path_of_syntax_errors() {
        let text = "[[pool]]\nname = \"a\"\n[[pool]]\nname = \"b\"\nhosts = [\n  \"a\"\n  \"b\"\n]\n";
        let offset = text.find("\"b\"\n]").unwrap();
        assert_eq!(path_for_syntax_error(text, offset).to_string(), "pool[1].hosts");
        let text = "[admin]\ntoken = \n";
        assert_eq!(
            path_for_syntax_error(text, text.len() - 1).to_string(),
            "admin.token"
        );
        let text = "a.b = 1\n[admin\n";
        assert_eq!(path_for_syntax_error(text, text.len() - 1).to_string(), "admin");
    }
}
