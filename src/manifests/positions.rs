//! Where each part of a manifest is in its source: the line and column of every node, kept
//! beside the JSON value that the engine reads, so that a violation can name the
//! `FILE:LINE:COLUMN` of the image string it is about.
//!
//! YAML is read once, by serde-saphyr, into nodes that carry their location (its `Spanned`
//! wrapper), which are then split into the `serde_json::Value` and a [`Marks`] tree of the same
//! shape. JSON is read by serde_json, whose rules decide what the value is; its text is read a
//! second time by serde-saphyr (JSON is YAML 1.2) only for the marks.

use std::fmt;

use serde::Serialize;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use serde_saphyr::Spanned;

/// A place in a source text: line and column, both counted from 1; the column counts
/// characters (Unicode code points), not bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize)]
pub struct Position {
    pub line: u32,
    pub column: u32,
}

impl Position {
    pub(super) fn of(location: &serde_saphyr::Location) -> Position {
        Position {
            line: u32::try_from(location.line()).unwrap_or(u32::MAX),
            column: u32::try_from(location.column()).unwrap_or(u32::MAX),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// The positions of a document's nodes, in the shape of the document: the position of the
/// node itself, and of its items or entries.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Marks {
    at: Position,
    children: Children,
}

#[derive(Debug, Clone, PartialEq, Default)]
enum Children {
    #[default]
    None,
    Items(Vec<Marks>),
    Entries(Vec<(String, Marks)>),
}

impl Marks {
    /// Marks of a node at `at`, with nothing known of its children.
    pub(super) fn at(at: Position) -> Marks {
        Marks {
            at,
            children: Children::None,
        }
    }

    /// Where the node starts.
    pub fn position(&self) -> Position {
        self.at
    }

    /// The marks of a mapping's entry. With a repeated key, the last one counts, as it does
    /// in the value.
    pub fn get(&self, key: &str) -> Option<&Marks> {
        match &self.children {
            Children::Entries(entries) => entries.iter().rev().find(|(k, _)| k == key),
            _ => None,
        }
        .map(|(_, m)| m)
    }

    /// The marks of a sequence's item.
    pub fn item(&self, index: usize) -> Option<&Marks> {
        match &self.children {
            Children::Items(items) => items.get(index),
            _ => None,
        }
    }

    /// The position of the node at a field path such as `spec.containers[0].image` (the
    /// form of [`ImageUse::field_path`](crate::workload::ImageUse::field_path)); `None` when
    /// the document has no such node. Keys holding `.` or `[` cannot be named this way.
    pub fn find(&self, field_path: &str) -> Option<Position> {
        let mut node = self;
        for segment in field_path.split('.') {
            let (key, mut indices) = match segment.find('[') {
                Some(i) => (&segment[..i], &segment[i..]),
                None => (segment, ""),
            };
            if !key.is_empty() {
                node = node.get(key)?;
            }
            while let Some(rest) = indices.strip_prefix('[') {
                let (index, tail) = rest.split_once(']')?;
                node = node.item(index.parse().ok()?)?;
                indices = tail;
            }
            if !indices.is_empty() {
                return None;
            }
        }
        Some(node.at)
    }

    /// Moves every position by `lines`, and the columns of the first line by `columns`: for
    /// a text that was read as a part of a larger one, starting on its line `lines + 1`,
    /// column `columns + 1`.
    fn shift(&mut self, lines: u32, columns: u32) {
        if self.at.line == 1 {
            self.at.column = self.at.column.saturating_add(columns);
        }
        self.at.line = self.at.line.saturating_add(lines);
        match &mut self.children {
            Children::None => {}
            Children::Items(items) => items.iter_mut().for_each(|m| m.shift(lines, columns)),
            Children::Entries(entries) => {
                entries
                    .iter_mut()
                    .for_each(|(_, m)| m.shift(lines, columns));
            }
        }
    }

    /// Takes the marks of a sequence's items out (for the items of a list, which become
    /// documents of their own); empty marks when the node is not a sequence.
    pub(super) fn into_items(self) -> Vec<Marks> {
        match self.children {
            Children::Items(items) => items,
            _ => Vec::new(),
        }
    }

    /// Takes the marks of a mapping's entry out.
    pub(super) fn take(&mut self, key: &str) -> Option<Marks> {
        match &mut self.children {
            Children::Entries(entries) => {
                let i = entries.iter().rposition(|(k, _)| k == key)?;
                Some(entries.swap_remove(i).1)
            }
            _ => None,
        }
    }
}

/// A YAML node as serde-saphyr reads it, with the locations of its children; split into a
/// value and marks by [`split`].
pub(super) struct Node(NodeValue);

enum NodeValue {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Items(Vec<Spanned<Node>>),
    Entries(Vec<(String, Spanned<Node>)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(NodeVisitor).map(Node)
    }
}

/// Reads any node the way `serde_json::Value` does (the same numbers, nulls and keys), keeping
/// the location of every child.
struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = NodeValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }
    fn visit_unit<E>(self) -> Result<NodeValue, E> {
        Ok(NodeValue::Null)
    }
    fn visit_none<E>(self) -> Result<NodeValue, E> {
        Ok(NodeValue::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<NodeValue, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_bool<E>(self, v: bool) -> Result<NodeValue, E> {
        Ok(NodeValue::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<NodeValue, E> {
        Ok(NodeValue::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<NodeValue, E> {
        Ok(NodeValue::Number(v.into()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<NodeValue, E> {
        Number::from_i128(v)
            .map(NodeValue::Number)
            .ok_or_else(|| E::custom(format_args!("number {v} is out of range")))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<NodeValue, E> {
        Number::from_u128(v)
            .map(NodeValue::Number)
            .ok_or_else(|| E::custom(format_args!("number {v} is out of range")))
    }
    fn visit_f64<E>(self, v: f64) -> Result<NodeValue, E> {
        // As serde_json::Value: a number JSON cannot hold becomes null.
        Ok(Number::from_f64(v).map_or(NodeValue::Null, NodeValue::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<NodeValue, E> {
        Ok(NodeValue::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<NodeValue, E> {
        Ok(NodeValue::String(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NodeValue, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(NodeValue::Items(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NodeValue, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some(entry) = map.next_entry::<String, Spanned<Node>>()? {
            entries.push(entry);
        }
        Ok(NodeValue::Entries(entries))
    }
}

/// Splits a located node into its value and its marks.
pub(super) fn split(node: Spanned<Node>) -> (Value, Marks) {
    let at = Position::of(&node.referenced);
    let leaf = |value| {
        (
            value,
            Marks {
                at,
                children: Children::None,
            },
        )
    };
    match node.value.0 {
        NodeValue::Null => leaf(Value::Null),
        NodeValue::Bool(b) => leaf(Value::Bool(b)),
        NodeValue::Number(n) => leaf(Value::Number(n)),
        NodeValue::String(s) => leaf(Value::String(s)),
        NodeValue::Items(items) => {
            let (values, marks) = items.into_iter().map(split).unzip();
            (
                Value::Array(values),
                Marks {
                    at,
                    children: Children::Items(marks),
                },
            )
        }
        NodeValue::Entries(entries) => {
            let mut map = Map::new();
            let mut marks = Vec::with_capacity(entries.len());
            for (key, node) in entries {
                let (value, m) = split(node);
                marks.push((key.clone(), m));
                map.insert(key, value);
            }
            (
                Value::Object(map),
                Marks {
                    at,
                    children: Children::Entries(marks),
                },
            )
        }
    }
}

/// Where a part of a text starts in the whole: the lines and columns before it.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Offset {
    lines: u32,
    columns: u32,
}

impl Offset {
    /// The offset just after `part`, which starts at this offset.
    pub(super) fn after(self, part: &str) -> Offset {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        match part.rsplit_once('\n') {
            Some((head, tail)) => Offset {
                lines: self
                    .lines
                    .saturating_add(count(head.matches('\n').count()))
                    .saturating_add(1),
                columns: count(tail.chars().count()),
            },
            None => Offset {
                lines: self.lines,
                columns: self.columns.saturating_add(count(part.chars().count())),
            },
        }
    }
}

/// The marks of one JSON value, `part` of a larger text starting at `offset`; when
/// serde-saphyr reads it otherwise than serde_json did, marks of the value's start alone.
pub(super) fn json_marks(part: &str, offset: Offset) -> Marks {
    let options = serde_saphyr::options! {
        // serde_json keeps the last of repeated keys; the marks must follow the same one.
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::LastWins,
        budget: super::yaml_budget(),
    };
    let mut marks = match serde_saphyr::from_str_with_options::<Spanned<Node>>(part, options) {
        Ok(node) => split(node).1,
        Err(_) => {
            let blank = &part[..part.len() - part.trim_start().len()];
            let start = Offset::default().after(blank);
            Marks {
                at: Position {
                    line: start.lines.saturating_add(1),
                    column: start.columns.saturating_add(1),
                },
                children: Children::None,
            }
        }
    };
    marks.shift(offset.lines, offset.columns);
    marks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Value, Marks) {
        split(serde_saphyr::from_str::<Spanned<Node>>(text).unwrap())
    }

    #[test]
    fn values_are_those_serde_json_value_reads() {
        let text = "a: 1\nb: -2\nc: 1.5\nd: ~\ne: [true, 'x', \"y\"]\nf: {g: 18446744073709551615}\n'1': one\n";
        let (value, _) = parse(text);
        let direct: Value = serde_saphyr::from_str(text).unwrap();
        assert_eq!(value, direct);
    }

    #[test]
    fn finds_the_position_of_a_field_path() {
        let text = "\
apiVersion: v1
kind: Pod
spec:
  containers:
    - name: a
      image: nginx:1.27
    - name: b
      image: \"busybox\"
  volumes:
  - name: v
    image: {reference: quay.io/x/y:1}
";
        let (_, marks) = parse(text);
        let at = |p| marks.find(p).map(|p| (p.line, p.column));
        assert_eq!(at("spec.containers[0].image"), Some((6, 14)));
        assert_eq!(at("spec.containers[1].image"), Some((8, 14)));
        assert_eq!(at("spec.volumes[0].image.reference"), Some((11, 24)));
        assert_eq!(at("spec.containers[2].image"), None);
        assert_eq!(at("spec.containers.image"), None);
        assert_eq!(at("kind"), Some((2, 7)));
    }

    #[test]
    fn anchors_and_merges_point_where_the_value_is_used() {
        let text = "\
base: &img registry.corp.example/app:1
spec:
  containers:
  - name: a
    image: *img
";
        let (value, marks) = parse(text);
        assert_eq!(
            value["spec"]["containers"][0]["image"],
            "registry.corp.example/app:1"
        );
        assert_eq!(marks.find("spec.containers[0].image").unwrap().line, 5);
    }

    #[test]
    fn json_marks_follow_the_text_around_them() {
        let text = "{\"a\": 1}\n\n  {\"kind\": \"Pod\",\n   \"spec\": {\"image\": \"x\"}}";
        let mut de = serde_json::Deserializer::from_str(text).into_iter::<Value>();
        de.next().unwrap().unwrap();
        let start = de.byte_offset();
        de.next().unwrap().unwrap();
        let marks = json_marks(
            &text[start..de.byte_offset()],
            Offset::default().after(&text[..start]),
        );
        assert_eq!(
            marks.find("kind").unwrap(),
            Position {
                line: 3,
                column: 12
            }
        );
        assert_eq!(
            marks.find("spec.image").unwrap(),
            Position {
                line: 4,
                column: 22
            }
        );
    }
}
